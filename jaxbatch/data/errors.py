"""The one error type for unusable input data; messages name the file, line and key."""


class DataError(ValueError):
    pass


def read_text_file(path) -> str:
    """Reads UTF-8 text; a missing file or another encoding becomes a DataError naming the file and byte."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#x} at offset {e.start}); "
                        f"re-encode the file as UTF-8") from e
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    return text

"""The errors timm-hvt raises, and how its commands show an error in one line."""

__all__ = ['CheckpointMismatchError', 'PretrainedWeightsUnavailable', 'add_note', 'describe_error', 'first_line']


class CheckpointMismatchError(RuntimeError):
    """A checkpoint holds another architecture than the model it is loaded into."""


class PretrainedWeightsUnavailable(RuntimeError):
    """None of a model's pretrained weight sources could be had, or a cached file cannot be used."""


def add_note(e: BaseException, note: str) -> None:
    """Name the file an error came from without changing its type or message (Python >= 3.11 shows notes)."""
    if hasattr(e, 'add_note'):
        e.add_note(note)


def describe_error(e: BaseException) -> str:
    """An error as one line: its type, message and notes."""
    text = ' '.join([*str(e).split(), *' '.join(getattr(e, '__notes__', ())).split()])
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def first_line(e: BaseException) -> str:
    """An error's type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f'{type(e).__name__}: {lines[0]}' if lines else type(e).__name__

"""Where a study keeps its state: a folder (local, or NFS on a cluster), or any URI Ray Tune's storage accepts
(`s3://bucket/prefix`, `gs://…`, `file://…`). Besides Tune's experiment, the study's folder holds three small files,
so that `--resume NAME` needs nothing else: the resolved space, the tracking URI and the Optuna storage URL.

On a URI, what must be a local file lives elsewhere: the Optuna study in a database (`--optuna-storage`), trial
scratch in each trial's local folder on its node.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ptplus_tune.atomic import write_text
from ptplus_tune.errors import PTPlusError

if TYPE_CHECKING:
    from ptplus_tune.spaces import StudySpec

SPEC_FILE = "study_space.yaml"  # the resolved space, saved with the study so that resuming needs nothing else
TRACKING_FILE = "tracking_uri"  # where its runs are, so that --resume writes to them again
OPTUNA_FILE = "optuna_storage"  # where its Optuna trials are (service.optuna_store), likewise
OPTUNA_DB = "optuna.db"  # a local study's own Optuna storage (sqlite), when no database was given


def is_uri(storage_path: str) -> bool:
    return "://" in storage_path


class StudyDir:
    def __init__(self, storage_path: str, name: str):
        import pyarrow.fs

        self.name = name
        if is_uri(storage_path):
            self.storage = storage_path.rstrip("/")  # what Tune is given, and what messages show
            self.fs, root = pyarrow.fs.FileSystem.from_uri(self.storage)
            self.local: Path | None = None
        else:
            self.storage = str(Path(storage_path).expanduser().resolve())
            self.fs, root = pyarrow.fs.LocalFileSystem(), self.storage
            self.local = Path(self.storage) / name
        self._root = f"{root.rstrip('/')}/{name}"

    def __str__(self) -> str:
        return f"{self.storage}/{self.name}"

    def exists(self) -> bool:
        """Whether anything is there already."""
        from pyarrow.fs import FileSelector

        return bool(self.fs.get_file_info(FileSelector(self._root, allow_not_found=True)))

    def read(self, file: str) -> str | None:
        from pyarrow.fs import FileType

        path = f"{self._root}/{file}"
        if self.fs.get_file_info(path).type != FileType.File:
            return None
        with self.fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")

    def write(self, file: str, text: str) -> None:
        """Complete or absent: a local file is replaced atomically; an object store writes whole objects."""
        if self.local is None:
            self.fs.create_dir(self._root, recursive=True)
            with self.fs.open_output_stream(f"{self._root}/{file}") as stream:
                stream.write(text.encode("utf-8"))
            return
        write_text(self.local / file, text)


def local_storage(study_path: Path) -> str:
    return f"sqlite:///{study_path / OPTUNA_DB}"


def resume_command(name: str, storage_path: str) -> str:
    return f"ptplus-tune --resume {name} --storage-path {StudyDir(storage_path, name).storage}"


def check_new(storage_path: str, name: str) -> StudyDir:
    folder = StudyDir(storage_path, name)
    if folder.exists():
        raise PTPlusError(f"a study named {name!r} already exists in {folder.storage}; continue it with --resume "
                          f"{name} or choose another --name")
    return folder


def saved_spec(storage_path: str, name: str) -> StudySpec:
    import yaml

    from ptplus_tune.spaces import parse_space

    folder = StudyDir(storage_path, name)
    text = folder.read(SPEC_FILE)
    if text is None:
        raise PTPlusError(f"there is no study {name!r} to resume under {folder.storage} (see --storage-path)")
    return parse_space(yaml.safe_load(text), source=f"{folder}/{SPEC_FILE}", default_name=name)


def saved_tracking_uri(storage_path: str, name: str) -> str | None:
    text = StudyDir(storage_path, name).read(TRACKING_FILE)
    return text.strip() if text else None


def optuna_storage_of(storage_path: str, name: str, given: str | None = None) -> str:
    """A study's Optuna storage: the one it was started with (resumed), else `given`, else its own sqlite file."""
    folder = StudyDir(storage_path, name)
    saved = folder.read(OPTUNA_FILE)
    if saved:
        return saved.strip()
    if given:
        return given
    if folder.local is None:
        raise PTPlusError(f"a study on {folder.storage} needs --optuna-storage (a database URL, e.g. "
                          f"postgresql+psycopg2://user@host:5432/optuna): its Optuna study cannot live there as sqlite")
    return local_storage(folder.local)

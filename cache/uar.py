"""UAR-style `.npy` feature folders (`**/0_real/*.npy`, `**/1_fake/*.npy`): scan them into meta rows, load safely."""

from __future__ import annotations

import hashlib
import math
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

# The one rule, for folders of images and of features alike: `0_real` holds reals (label 0), `1_fake` fakes (1).
LABEL_DIRS = {"0_real": 0, "1_fake": 1}
DEFAULT_SOURCE = "uar"
UAR_FEATURE = "probe"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def scan_uar(root: str | Path, *, source: str | None = None) -> pd.DataFrame:
    """Meta rows for every `.npy` below a `0_real` / `1_fake` folder of `root`, sorted by path.

    Rules (also used by `aigi import uar`):
      - `label`: 0 under `0_real`, 1 under `1_fake`.
      - `source`: the first folder under `root` (a generator folder; category sub-folders such as ForenSynths'
        `progan/airplane/0_real` merge into it), for reals and fakes alike. When `0_real`/`1_fake` sit directly in
        `root`, `source` is the given `source` (default "uar").
      - `path`: the file's path relative to `root`, prefixed with `<source>/` when the folders sit directly in
        `root` (so two such folders imported under different sources never collide); `image_id` = sha256 of it.
      - `pair_id`: a real and a fake with the same file stem in the same parent folder share the real's
        `image_id`; an unpaired real keeps its own `image_id`, an unpaired fake gets "".
      - column `file`: the absolute file path (not a manifest column).

    Raises:
        FileNotFoundError: when `root` is missing or holds no such `.npy` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; pass the folder of .npy features to import")
    rels = sorted(_npy_files(root))
    if not rels:
        raise FileNotFoundError(
            f"{root}: no **/0_real/*.npy or **/1_fake/*.npy files (UAR layout) found; pass the folder that holds "
            "0_real/ and 1_fake/ (or <source>/0_real, <source>/1_fake)"
        )
    base = root.resolve()
    rows = []
    for rel in rels:
        parts = rel.split("/")
        bare = len(parts) == 2
        src = (source or DEFAULT_SOURCE) if bare else parts[0]
        path = f"{src}/{rel}" if bare else rel
        group = path.rsplit("/", 2)[0] if path.count("/") >= 2 else ""
        rows.append((_sha(path), path, LABEL_DIRS[parts[-2]], src, group, parts[-1][:-4], os.path.join(base, rel)))
    df = pd.DataFrame(rows, columns=["image_id", "path", "label", "source", "_group", "_stem", "file"])
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    reals = df[df["label"] == 0].set_index(["_group", "_stem"])["image_id"]
    pair = pd.Series(list(zip(df["_group"], df["_stem"]))).map(reals.to_dict()).fillna("")
    df["pair_id"] = pair.to_numpy()
    df["view"] = "orig"
    return df.drop(columns=["_group", "_stem"])


def _npy_files(root: Path) -> list[str]:
    """Paths (relative, "/"-separated) of the `.npy` files directly inside any `0_real`/`1_fake` folder below root
    (one directory walk, following directory links like `Path.rglob`, each folder visited once: a link loop ends)."""
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        if os.path.basename(dirpath) not in LABEL_DIRS:
            continue
        rel = Path(dirpath).relative_to(root).as_posix()
        out.extend(f"{rel}/{name}" for name in filenames if name.endswith(".npy"))
    return out


def _npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a `.npy` file's header declares, checked against the file: a regular file whose size
    holds that many values (a forged header claiming a huge shape is refused before anything is allocated).

    Raises:
        ValueError: naming the file and what is wrong.
    """
    with open(path, "rb", buffering=0, opener=_nonblocking) as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError(f"{path}: not a regular file (a FIFO, socket or device); only .npy files are imported")
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
        except (ValueError, EOFError, SyntaxError) as err:
            raise ValueError(f"{path}: not a .npy file ({' '.join(str(err).split())[:120]})") from None
        if dtype.hasobject:
            raise ValueError(f"{path}: refused, it needs pickle to load (it holds Python objects); save plain numbers")
        size, data = os.fstat(fh.fileno()).st_size, fh.tell()
    want = math.prod(shape) * dtype.itemsize
    if want != size - data:
        what = "truncated" if want > size - data else "longer than its header says"
        raise ValueError(
            f"{path}: its header declares shape {shape} ({want:,} bytes) but the file holds {size - data:,} bytes of "
            f"data ({what}); re-create it"
        )
    return shape, dtype


def _nonblocking(path: str, flags: int) -> int:
    """Open without blocking on a FIFO (the file is checked to be a regular one before it is read)."""
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def load_npy(path: str | Path, *, dim: int | None = None) -> np.ndarray:
    """One feature vector `(D,)` float32 from a `(1, D)` or `(D,)` `.npy`, never unpickling.

    Raises:
        ValueError: naming the file for pickled/unreadable files, wrong shapes, other dims than `dim`, NaN/inf.
    """
    try:
        _npy_header(path)  # raises naming the file: not a regular file, objects, truncated or forged header
        arr = np.load(path, allow_pickle=False)
    except OSError as err:
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    except (ValueError, EOFError) as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{path}: holds {getattr(arr, 'dtype', type(arr))}, expected real numbers")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{path}: shape {np.shape(arr)}, expected (1, D) or (D,)")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{path}: has {arr.shape[0]} values but earlier files have {dim} (mixed dims in one folder)")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN/inf values")
    return arr


def _npy_layout(path: str) -> tuple[bytes, np.dtype, int] | None:
    """(header bytes, dtype, data bytes) of a plain numeric `(1, D)`/`(D,)` `.npy`, parsed by numpy without
    unpickling; None when the file is anything else."""
    try:
        with open(path, "rb", opener=_nonblocking) as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            size = fh.tell()
            fh.seek(0)
            head = fh.read(size)
    except (OSError, ValueError):
        return None
    if dtype.hasobject or not np.issubdtype(dtype, np.number) or np.iscomplexobj(np.zeros(0, dtype)):
        return None
    if fortran or shape not in ((1, shape[-1]), (shape[-1],)) or not shape[-1]:
        return None
    return head, dtype, int(shape[-1]) * dtype.itemsize


def load_npy_batch(files: list[str], *, dim: int, threads: int = 4) -> np.ndarray:
    """Stack several `.npy` vectors into `[n, dim]` float32, with the checks of `load_npy`.

    Files whose header is byte-for-byte that of the first file (the usual case: one writer, one shape) are read
    whole in one call and viewed in place, with no per-file header parsing; any other file goes through
    `load_npy`. NaN/inf is checked once per batch, naming the first bad file. Reads run on `threads` threads
    (file reads release the GIL).
    """
    out = np.empty((len(files), dim), dtype=np.float32)
    layout = _npy_layout(files[0]) if files else None
    if layout is not None and layout[2] != dim * layout[1].itemsize:
        layout = None
    step = max(256, -(-len(files) // max(threads, 1)))
    spans = [(lo, min(lo + step, len(files))) for lo in range(0, len(files), step)]
    if len(spans) > 1:
        with ThreadPoolExecutor(max_workers=len(spans)) as pool:
            list(pool.map(lambda span: _fill(out, files, span, layout, dim), spans))
    elif spans:
        _fill(out, files, spans[0], layout, dim)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueError(f"{files[int(np.argmax(bad))]}: contains NaN/inf values")
    return out


def _fill(out: np.ndarray, files: list[str], span: tuple[int, int], layout, dim: int) -> None:
    head, dtype, nbytes = layout if layout else (b"", None, -1)
    for i in range(*span):
        raw = b""
        if layout is not None:
            try:
                with open(files[i], "rb", buffering=0, opener=_nonblocking) as fh:
                    regular = stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
                    raw = fh.read(len(head) + nbytes + 1) if regular else b""
            except OSError:
                raw = b""
        if len(raw) == len(head) + nbytes and raw.startswith(head):
            out[i] = np.frombuffer(raw, dtype=dtype, offset=len(head))
        else:
            out[i] = load_npy(files[i], dim=dim)


def uar_spec(dim: int, *, extractor: str | None = None) -> dict:
    """The spec recorded for shipped UAR features of width `dim` (AIM-v1 3B attention probe when 3072-d)."""
    name = extractor or ("aim-v1-3b" if dim == 3072 else "unknown")
    return {"extractor": {"name": name, "feature": UAR_FEATURE, "source": "uar-shipped"}, "dim": int(dim)}

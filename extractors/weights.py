"""Find a backbone's weights (a local path, `hf-hub:` name or alias) and read them safely (no pickle).

A local path is used as it is and never touches the network. A name is resolved to local files once, here
(`resolve_weights`), before a loader reads them: `hf-hub:ORG/REPO[:FILE][@REVISION]` (several joined by commas for
AIM-v1's backbone + head) through `aigi.common.hub`, or a short alias of a backbone aigi knows (`ALIASES`: `openai`
for CLIP from open_clip's registry, `timm` for a timm model's default pretrained tag from timm's registry, `apple`
for Apple's AIM-v1 checkpoints, checked against the sha256 prefixes Apple publishes). The files' content fingerprint
is `common.files.sha256_file`, whatever named them.
"""

from __future__ import annotations

import difflib
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aigi.common.hub import HubName, WeightsUnavailable, check_sha256, hub_file, is_hub_name, parse_hub_name

if TYPE_CHECKING:
    import torch

from aigi.common.files import asks_to_run_code

_WRAPPER_KEYS = ("state_dict", "model", "module", "params")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    while isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) // 2:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    raise ValueError(f"{path}: no state dict (a mapping of names to tensors) found in this file")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a local .pth/.pt/.bin/.safetensors file without executing pickled code.

    Training checkpoints wrapping the weights under "state_dict" / "model" are unwrapped and a "module." prefix
    (DataParallel) is removed. Large zip-format files are memory-mapped rather than read into RAM.

    Args:
        path: the weights file.

    Returns:
        Parameter name -> tensor (on the CPU).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a TorchScript archive, a pickle that needs code execution, or no tensors in the file.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the weights file itself (.pth, .pt, .bin or .safetensors)")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: weights file not found (a path is never downloaded; pass an existing file, or a name: "
            "hf-hub:ORG/REPO[:FILE][@REVISION] or an alias of the backbone, see docs/WEIGHTS.md)"
        )
    fix = "pass a plain state dict (torch.save(model.state_dict(), FILE)) or a .safetensors file"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except SafetensorError as err:
            raise ValueError(f"{path}: not a readable .safetensors file ({err}); {fix}") from None
    if _is_torchscript(path):
        raise ValueError(
            f"{path} is a TorchScript archive (OpenAI's original CLIP release), which cannot be loaded without "
            'executing its code. Convert it once to a plain state dict: python -c "import torch; '
            "m = torch.jit.load('ViT-L-14.pt', map_location='cpu'); torch.save(m.state_dict(), 'ViT-L-14.pth')\""
        )
    import torch  # imported here: naming and resolving weights needs no torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:  # weights_only refuses pickled code; random bytes are no pickle at all
        if not asks_to_run_code(err):
            raise ValueError(f"{path}: not a weights file (damaged, or another format); {fix}") from None
        raise ValueError(f"{path}: cannot be read as plain weights, reading it would run pickled code; {fix}") from None
    except Exception as err:  # zip errors, truncated or text files
        reason = " ".join(str(err).split())[:160]
        raise ValueError(f"{path}: cannot be read as plain weights ({type(err).__name__}: {reason}); {fix}") from None
    return _unwrap(obj, path)


# ------------------------------------------------------------------------------------ names -> local files


@dataclass(frozen=True)
class HubFile:
    """One file an alias names: where it lies on the hub, the file names tried in order, and a published pin."""

    name: HubName
    candidates: tuple[str, ...] = ()
    pin: str = ""


@dataclass(frozen=True)
class WeightsAlias:
    """A short `--weights` name of a backbone's released weights.

    Attributes:
        alias: what the user types (`openai`).
        backbones: the backbone names (or a family prefix ending in ":") it applies to.
        text: what it names, for listings.
        source: where the mapping and pins come from.
        files: backbone name -> the hub files (several: joined as BACKBONE,HEAD), resolved when asked for.
    """

    alias: str
    backbones: tuple[str, ...]
    text: str
    source: str
    files: Callable[[str, str], list[HubFile]]


_OPEN_CLIP = {"clip-l14": "ViT-L-14", "clip-l14-336": "ViT-L-14-336"}
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's own order
_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's load_state_dict_from_hf order
# Apple's AIM-v1 release (apple/ml-aim aim-v1/README.md and aim/v1/constants.py): files in the hub repository
# apple/AIM, with the sha256 prefixes that README publishes: (file stem, backbone, best-layers head, last-layers head).
_AIM_REPO = "apple/AIM"
_AIM = {
    "aim-v1-600m": ("aim_600m_2bimgs", "0d6f6b8f", "ebd45c05", "5ce5a341"),
    "aim-v1-1b": ("aim_1b_5bimgs", "d254ecd3", "f1ed7852", "db3be2ad"),
    "aim-v1-3b": ("aim_3b_5bimgs", "8475ce4e", "ad380e16", "5c057b30"),
    "aim-v1-7b": ("aim_7b_5bimgs", "184ed94c", "73ecd732", "1e5c99ba"),
}


def _open_clip_files(backbone: str, tag: str) -> list[HubFile]:
    import open_clip

    hub = str((open_clip.get_pretrained_cfg(_OPEN_CLIP[backbone], tag) or {}).get("hf_hub") or "")
    repo, filename = hub.rsplit("/", 1) if hub.count("/") >= 2 else (hub, "")  # "ORG/REPO/" names no file
    if not repo:
        raise WeightsUnavailable(f"--weights {tag}: open_clip's registry names no hub file for {_OPEN_CLIP[backbone]}")
    return [HubFile(HubName(repo, filename or None), () if filename else _OPEN_CLIP_FILES)]


def _timm_files(backbone: str, alias: str) -> list[HubFile]:
    import timm
    from timm.models import get_pretrained_cfg

    arch = backbone.split(":", 1)[1]
    tag = alias.partition(":")[2]
    try:
        cfg = get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    except RuntimeError:  # timm: an unknown tag of a known architecture
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        where = f"the pretrained tag {tag!r} of {arch}" if tag else f"a default pretrained tag of {arch}"
        url = f"; only {cfg.url}: fetch it by hand and pass --weights PATH" if cfg is not None and cfg.url else ""
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")][:8]
        known = f" (its tags: {', '.join(tags)})" if tags and cfg is None else ""
        raise WeightsUnavailable(f"--weights {alias}: timm's registry has no hub file for {where}{known}{url}")
    filename = cfg.hf_hub_filename
    return [HubFile(HubName(cfg.hf_hub_id, filename), () if filename else _TIMM_FILES)]


def _aim_files(backbone: str, alias: str) -> list[HubFile]:
    stem, pin_backbone, pin_best, pin_last = _AIM[backbone]
    last = alias.endswith("-last")
    head = f"{stem}_attnprobe_head_{'last' if last else 'best'}_layers.pth"
    return [
        HubFile(HubName(_AIM_REPO, f"{stem}_attnprobe_backbone.pth"), pin=pin_backbone),
        HubFile(HubName(_AIM_REPO, head), pin=pin_last if last else pin_best),
    ]


ALIASES = (
    WeightsAlias("openai", tuple(_OPEN_CLIP), "OpenAI's CLIP weights as open_clip's registry places them on the hub",
                 "open_clip.get_pretrained_cfg(MODEL, 'openai')['hf_hub']", _open_clip_files),
    WeightsAlias("timm", ("timm:",), "the model's default pretrained tag in timm's registry (timm:TAG: that tag)",
                 "timm.models.get_pretrained_cfg(ARCH[.TAG]).hf_hub_id", _timm_files),
    WeightsAlias("apple", tuple(_AIM), "Apple's backbone + attention-probe head over the best layers",
                 "apple/ml-aim aim-v1/README.md (files in hf-hub apple/AIM, sha256 prefixes checked)", _aim_files),
    WeightsAlias("apple-last", tuple(_AIM), "Apple's backbone + attention-probe head over the last 6 blocks",
                 "apple/ml-aim aim-v1/README.md (files in hf-hub apple/AIM, sha256 prefixes checked)", _aim_files),
)  # fmt: skip


def _applies(alias: WeightsAlias, backbone: str) -> bool:
    return any(backbone == b or (b.endswith(":") and backbone.startswith(b)) for b in alias.backbones)


def aliases_of(backbone: str) -> dict[str, WeightsAlias]:
    """The aliases a backbone name accepts (`timm:TAG` is written `timm` here)."""
    return {a.alias: a for a in ALIASES if _applies(a, backbone)}


def alias_files(backbone: str, alias: str) -> list[HubFile] | None:
    """The hub files `alias` names for `backbone` (None: not one of its aliases); reads the model library's registry.

    Raises:
        WeightsUnavailable: the registry names no hub file for it.
    """
    known = aliases_of(backbone)
    found = known.get(alias) or (known.get("timm") if alias.startswith("timm:") else None)
    return None if found is None else found.files(backbone, alias)


def alias_rows() -> list[dict[str, str]]:
    """Every alias of every backbone with the hub files it names and their published pins (nothing downloaded, no
    model library imported: the registries' entries are named, and read when an alias is resolved)."""
    rows = []
    for alias in ALIASES:
        for backbone in alias.backbones:
            if backbone.endswith(":"):
                files = ["timm's pretrained_cfg(ARCH[.TAG]).hf_hub_id: model.safetensors, else pytorch_model.bin"]
                pins = ""
            elif backbone in _OPEN_CLIP:
                files = [f"open_clip's hf_hub of ({_OPEN_CLIP[backbone]!r}, {alias.alias!r}): "
                         f"{' / '.join(_OPEN_CLIP_FILES)}"]  # fmt: skip
                pins = ""
            else:
                found = alias.files(backbone, alias.alias)
                files = [str(f.name) + (f" ({' / '.join(f.candidates)})" if f.candidates else "") for f in found]
                pins = ", ".join(f.pin for f in found if f.pin)
            name = f"{backbone}<model>" if backbone.endswith(":") else backbone
            rows.append({"backbone": name, "alias": alias.alias, "what": alias.text, "files": " + ".join(files),
                         "sha256": pins, "source": alias.source})  # fmt: skip
    return rows


def _fetch(file: HubFile, what: str, manual: str | None = None) -> Path:
    path = hub_file(file.name, candidates=file.candidates, what=what, manual=manual)
    if file.pin:
        fix = f"pass --weights {file.name} to take it without the published pin, or a local file you trust"
        check_sha256(path, file.pin, what=what, fix=fix)
    return path


def _manual(files: list[HubFile], option: str) -> str | None:
    """The manual way for several files (a backbone + head pair); None: the default for one."""
    if len(files) < 2:
        return None
    urls = " and ".join(f.name.url() for f in files)
    return f"download {urls} by hand and pass {option} BACKBONE.pth,HEAD.pth"


def _unknown_name(text: str, backbone: str, option: str) -> WeightsUnavailable:
    known = sorted(aliases_of(backbone))
    close = difflib.get_close_matches(text, known, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    names = f"its aliases: {', '.join(known)}; " if known else ""
    return WeightsUnavailable(
        f"{option} {text!r}: no such file, and not a weights name of {backbone}{hint} ({names}or "
        "hf-hub:ORG/REPO[:FILE][@REVISION]; see docs/WEIGHTS.md)"
    )


def resolve_weights(weights: str | Path | None, *, backbone: str, option: str = "--weights") -> str | None:
    """The local weights a `--weights` value names, for backbone `backbone`; the one place names are resolved.

    An existing local path (file, AIM-v1 folder, or `A,B` pair) is returned as it is, without touching the
    network; so is a path that does not exist (the loader names it). `hf-hub:` names (comma-joined for a pair) and
    aliases are downloaded through huggingface_hub's cache (or found there offline) and returned as local paths,
    comma-joined for a backbone + head pair, as the loaders take them.

    Args:
        weights: what the user typed (None: no weights).
        backbone: the backbone name (`clip-l14`, `aim-v1-3b`, `timm:resnet50`), which picks the aliases.
        option: the option the value was given to (for messages).

    Raises:
        WeightsUnavailable: a name that does not resolve (one line: what was tried, the manual way).
        ValueError: a malformed `hf-hub:` name.
    """
    if weights is None:
        return None
    text = str(weights).strip()
    parts = [p.strip() for p in text.split(",")]
    if not is_weights_name(text):
        return text
    if any(is_hub_name(p) for p in parts):
        manual = f"download the file by hand and pass {option} PATH"
        return ",".join(
            str(_fetch(HubFile(parse_hub_name(p)), f"{option} {p}", None if len(parts) == 1 else manual))
            if is_hub_name(p)
            else p
            for p in parts
        )
    files = alias_files(backbone, text)
    if files is None:
        raise _unknown_name(text, backbone, option)
    if option != "--weights" and len(files) == 1:
        manual = f"download {files[0].name.url()} by hand and pass {option} PATH"
    else:
        manual = _manual(files, option)
    return ",".join(str(_fetch(f, f"{option} {text} ({f.name})", manual)) for f in files)


def is_weights_name(weights: str | Path) -> bool:
    """Whether `weights` is a name to resolve (a `hf-hub:` name or an alias-like word), not a local path."""
    text = str(weights).strip()
    return not Path(text).exists() and (any(is_hub_name(p.strip()) for p in text.split(",")) or _bare_word(text))


def _bare_word(text: str) -> bool:
    """A word that cannot be a file name the user meant (no folder, no suffix): an alias, or a mistyped one."""
    return bool(text) and os.sep not in text and "/" not in text and "," not in text and not Path(text).suffix

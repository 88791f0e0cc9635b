"""Turn a weights name (`hf-hub:ORG/REPO[:FILE][@REVISION]`) into a local file through huggingface_hub.

A local path is never looked up on the network: only a name that starts with `hf-hub:` is downloaded, through
`huggingface_hub.hf_hub_download` and therefore its cache and settings (`HF_HOME`, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`, revisions; a download goes to a temporary file that is renamed into
the cache only once its size matches, so an interrupted transfer is never taken for a complete file). A file that
lives at a plain URL (a GitHub raw file) is fetched with huggingface_hub's own `http_get` (the same session,
retries, resume and size check), into a temporary file beside its destination, checked against its pinned sha256,
then renamed. Anything that cannot be found or fetched is one `WeightsUnavailable` naming what was tried and the
manual way (the file to fetch, then `--weights PATH`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aigi.common.files import sha256_file

log = logging.getLogger(__name__)

HUB_PREFIX = "hf-hub:"
# The file names tried, in order, when a name gives no FILE (timm's, transformers' and open_clip's conventions).
DEFAULT_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HEX = re.compile(r"^[0-9a-f]{8,64}$")
_BUGS = (TypeError, AttributeError, NameError, KeyError)  # a mistake in this module, never the network's


class WeightsUnavailable(FileNotFoundError):
    """Weights named by the user that cannot be found, downloaded or verified; the message is one line naming what
    was tried and the manual way."""


@dataclass(frozen=True)
class HubName:
    """A file (or, without `filename`, the default weights file) of a Hugging Face hub repository."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    def __str__(self) -> str:
        return (
            f"{HUB_PREFIX}{self.repo_id}"
            + (f":{self.filename}" if self.filename else "")
            + (f"@{self.revision}" if self.revision else "")
        )

    def url(self, filename: str | None = None) -> str:
        """The download address of `filename` (default: this name's file) under the configured endpoint."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.repo_id, filename or self.filename or DEFAULT_FILES[0], revision=self.revision)


def is_hub_name(text: str | Path | None) -> bool:
    """Whether `text` is a `hf-hub:` name (an existing local path with that spelling stays a path)."""
    return text is not None and str(text).startswith(HUB_PREFIX) and not Path(str(text)).exists()


def parse_hub_name(text: str) -> HubName:
    """`hf-hub:ORG/REPO[:FILE][@REVISION]` -> HubName.

    Raises:
        ValueError: a malformed name (the message shows the grammar).
    """
    body = str(text).removeprefix(HUB_PREFIX).strip()
    body, _, revision = body.partition("@")
    repo_id, _, filename = body.partition(":")
    if not _REPO.match(repo_id) or (revision == "" and "@" in str(text)) or filename.startswith("/"):
        raise ValueError(
            f"weights name {text!r} is malformed; write hf-hub:ORG/REPO[:FILE][@REVISION], e.g. "
            "hf-hub:timm/vit_base_patch16_224.augreg_in21k:model.safetensors"
        )
    return HubName(repo_id, filename or None, revision or None)


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (`HF_HUB_OFFLINE=1`): nothing is downloaded, the cache is read."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check() if check else constants.HF_HUB_OFFLINE)


def _reason(err: BaseException) -> str:
    """`Type: first sentence` of an error, on one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    first = text.split(". ")[0]
    return f"{type(err).__name__}: {first[:200]}"


def _where() -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}, cache {constants.HF_HUB_CACHE}" + (" (HF_HUB_OFFLINE=1)" if offline() else "")


def hub_file(
    name: HubName,
    *,
    candidates: Sequence[str] = DEFAULT_FILES,
    what: str | None = None,
    manual: str | None = None,
) -> Path:
    """The local path of a hub file, downloaded into huggingface_hub's cache unless it is there already.

    Args:
        name: the repository, file and revision; without a file, `candidates` are tried in order (the first one the
            repository holds wins; offline, the first one in the cache).
        candidates: the file names to try when `name` gives none.
        what: how messages name the request (default `--weights NAME`).
        manual: the manual way, for messages (default: download the file's URL by hand, pass `--weights PATH`).

    Raises:
        WeightsUnavailable: not in the repository, not reachable, or offline and not in the cache.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    files = [name.filename] if name.filename else list(candidates or DEFAULT_FILES)
    tried = []
    for filename in files:
        try:
            return Path(hf_hub_download(name.repo_id, filename, revision=name.revision))
        except LocalEntryNotFoundError as err:  # offline: not in the cache; online: the hub could not be reached
            if not offline():
                tried.append(f"{filename} ({_reason(err)})")
                break
            tried.append(f"{filename} (not in the cache)")
        except EntryNotFoundError:  # the repository does not hold this file: try the next name
            tried.append(f"{filename} (absent)")
        except _BUGS:
            raise
        except Exception as err:  # the repository, revision or network: no other file name would fare better
            tried.append(f"{filename} ({_reason(err)})")
            break
    offline_fix = "unset HF_HUB_OFFLINE to download it, or " if offline() else ""
    manual = manual or f"download {name.url(files[0])} by hand and pass --weights PATH"
    raise WeightsUnavailable(
        f"{what or f'--weights {name}'}: could not get {' / '.join(tried)} from {_where()}; {offline_fix}{manual}"
    ) from None


def hub_folder(name: HubName, files: Sequence[Sequence[str]], *, what: str | None = None) -> Path:
    """A folder of a hub repository (`name.filename` as a sub-folder, or its root), holding one file of each group.

    Args:
        name: the repository and revision; `filename`, when given, is the sub-folder (a diffusers `vae`).
        files: groups of alternatives, e.g. (("config.json",), ("diffusion_pytorch_model.safetensors", "...bin")).
        what: how messages name the request (default `--weights NAME`).

    Raises:
        WeightsUnavailable: as `hub_file`.
    """
    sub = (name.filename or "").strip("/")
    root, what = HubName(name.repo_id, None, name.revision), what or f"--weights {name}"
    path = None
    for group in files:
        path = hub_file(root, candidates=[f"{sub}/{f}" if sub else f for f in group], what=what)
    assert path is not None, "hub_folder needs at least one group of files"
    return path.parent


# A diffusers model folder: its config and its weights (safetensors preferred, as diffusers does).
DIFFUSERS_FOLDER = (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))


def resolve_path(weights: str | Path, *, folder: Sequence[Sequence[str]] = ()) -> tuple[Path, str | None]:
    """The local path `weights` names, and the model's short name when it is a hub name (else None).

    A local path is returned as it is (never looked up on the network). A `hf-hub:` name is downloaded through the
    cache: its FILE when that has a file suffix, otherwise (when `folder` gives the files a model folder needs) the
    repository's root or FILE as a sub-folder, e.g. `hf-hub:stabilityai/sd-vae-ft-mse` or `hf-hub:ORG/PIPELINE:vae`.

    Raises:
        WeightsUnavailable: as `hub_file`.
        ValueError: a malformed name.
    """
    if not is_hub_name(weights):
        return Path(weights), None
    name = parse_hub_name(str(weights))
    is_file = bool(name.filename and Path(name.filename).suffix)
    short = Path(name.filename).stem if is_file else name.repo_id.split("/")[-1]  # type: ignore[arg-type]
    if folder and not is_file:
        return hub_folder(name, folder), short
    return hub_file(name), short


def check_sha256(path: Path, pin: str, *, what: str, fix: str) -> str:
    """The file's sha256, which must start with `pin` (a full 64-digit digest, or a published prefix).

    Raises:
        WeightsUnavailable: the digest differs (the file is not the one pinned); `fix` says what to do.
    """
    pin = pin.strip().lower()
    if not _HEX.match(pin):
        raise ValueError(f"{what}: pinned sha256 {pin!r} is not 8 to 64 hex digits")
    digest = sha256_file(path)
    if not digest.startswith(pin):
        raise WeightsUnavailable(
            f"{what}: {path.name} has sha256 {digest}, not the pinned {pin}: it is not the file that was pinned "
            f"(changed at its source, or damaged); {fix}"
        )
    return digest


def fetch_url(url: str, dest: Path, *, sha256: str | None, what: str, manual: str) -> Path:
    """Download a plain URL to `dest` through huggingface_hub's `http_get`: into a temporary sibling, checked
    (size against Content-Length, then `sha256` when given), then renamed, so `dest` is whole or absent.

    Args:
        url: the address (https://...).
        dest: the file to write; kept when it is there already and matches `sha256`.
        sha256: the pinned digest (full or prefix), or None to take the file unchecked.
        what: the name of the thing fetched, for messages.
        manual: the manual way, for messages ("fetch URL and run ...").

    Raises:
        WeightsUnavailable: offline, unreachable, interrupted, or a digest that differs.
    """
    if dest.is_file() and sha256 and sha256_file(dest).startswith(sha256.lower()):
        log.info(f"{what}: {dest.name} is here already (sha256 checked)")
        return dest
    if offline():
        raise WeightsUnavailable(f"{what}: HF_HUB_OFFLINE=1, so {url} is not downloaded; {manual}")
    from huggingface_hub.file_download import http_get

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.incomplete")
    try:
        with tmp.open("wb") as fh:
            http_get(url, fh, headers={"user-agent": "aigi"}, displayed_filename=dest.name)
        if sha256:
            check_sha256(tmp, sha256, what=what, fix=f"nothing was imported; {manual}")
        os.replace(tmp, dest)
    except WeightsUnavailable:
        raise
    except _BUGS:
        raise
    except Exception as err:
        raise WeightsUnavailable(f"{what}: could not download {url} ({_reason(err)}); {manual}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest

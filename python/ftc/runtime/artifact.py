"""An exported artifact on disk: its manifest, its integrity, the variant to run.

`read(path, variant)` parses `ftc-artifact.json`, refuses a format it does not know, and
checks, before any session exists, the sha256 of every file the chosen variant reads: the
shared files (tokenizer, its configs) and the variant's own file (`model.int8.onnx` and its
`model.int8.onnx.data`) or directory (`int4/`). A missing, edited or unlisted file is named,
never served. The other variants' files need only exist: loading int4 does not hash the fp32
weights, which would cost seconds per GB at every start for nothing that runs. Nor are the
GGUF files (`gguf/`, for llama.cpp and Ollama) hashed: this runtime never reads them, and an
artifact of GGUF files alone has no variant it can run.

    art = read(Path("artifact"), "int8")      # ArtifactError if a hash does not match
    art.model_path                             # artifact/model.int8.onnx

The card lists the sha256 of every other file, so the sha256 of `ftc-artifact.json` itself
(`Artifact.digest`, printed by `ftc export`, `ftc infer` and `GET /health`) names the whole
artifact: a deployment pins it (`--pin`, `read(..., pin=)`) and an edited card (swapped
labels, another template) is refused like an edited graph.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc import tasks
from ftc.errors import ArtifactError

FORMAT = "ftc-artifact-v1"
MANIFEST = "ftc-artifact.json"
REQUIRED = ("format", "task", "max_length", "variants", "default", "files")
CHUNK = 1 << 20
REEXPORT = "re-export it (`ftc export`) or copy the artifact directory again, whole"


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]
    variant: str
    digest: str  # sha256 of ftc-artifact.json: the whole artifact's name

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def model_path(self) -> Path:
        """The variant's ONNX file (classification) or onnxruntime-genai directory (causal-lm)."""
        return self.path / self.manifest["variants"][self.variant]["path"]

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.manifest.get("labels") or []]

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def template(self) -> str | None:
        return self.manifest.get("template")

    @property
    def pad_token_id(self) -> int | None:
        return self.manifest.get("pad_token_id")

    @property
    def eos_token_ids(self) -> list[int]:
        return [int(i) for i in self.manifest.get("eos_token_ids") or []]


def read(path: Path, variant: str | None = None, pin: str | None = None) -> Artifact:
    """The artifact at `path` with `variant` (default: the manifest's `default`), verified;
    with `pin`, only the artifact whose card has that sha256."""
    manifest = read_manifest(path)
    digest = sha256(path / MANIFEST)
    if pin is not None and digest != pin.strip().lower():
        raise ArtifactError(f"{path / MANIFEST}: sha256 {digest}, not the pinned {pin}: this is another artifact, or "
                            "its card was edited", hint="deploy the artifact you pinned, or pin this one's digest")
    variants = manifest["variants"]
    if not variants:
        raise ArtifactError(f"{path}: this artifact holds GGUF files only, which ftc's runtime does not run",
                            hint=f"serve them with Ollama (`ollama create NAME -f {path / 'gguf' / 'Modelfile'}`) or "
                            "llama.cpp, or export again with `--onnx` as well")
    name = variant or manifest["default"]
    if name not in variants:
        raise ArtifactError(f"{path}: no variant `{name}`; this artifact has {_names(variants)}",
                            hint=f"pass --variant {next(iter(variants))}, or leave it out for `{manifest['default']}`")
    verify(path, manifest, name)
    return Artifact(path, manifest, name, digest)


def read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        what = "no such directory" if not path.exists() else f"no {MANIFEST} in it"
        raise ArtifactError(f"{path}: not an ftc artifact ({what})",
                            hint="an artifact is the `artifact/` directory that `ftc export` writes")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{file}: cannot read: {e}", hint=REEXPORT) from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{file}: expected a JSON object", hint=REEXPORT)
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file}: format {manifest.get('format')!r}, this ftc reads {FORMAT!r}",
                            hint="export it again with this version of ftc")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{file}: missing {', '.join(f'`{k}`' for k in missing)}", hint=REEXPORT)
    if manifest["task"] not in tasks.names():
        raise ArtifactError(f"{file}: unknown task {manifest['task']!r}; expected one of {', '.join(tasks.names())}")
    variants = manifest["variants"]
    if not isinstance(variants, dict) or not (variants or manifest.get("gguf")) or not all(
            isinstance(v, dict) and isinstance(v.get("path"), str) for v in variants.values()):
        raise ArtifactError(f"{file}: `variants` must map names to {{\"path\": ...}}", hint=REEXPORT)
    if not isinstance(manifest["files"], dict):
        raise ArtifactError(f"{file}: `files` must map relative paths to sha256 digests", hint=REEXPORT)
    for key, ok, what in CARD_FIELDS:
        if key in manifest and not ok(manifest[key]):
            raise ArtifactError(f"{file}: `{key}` must be {what}, not {json.dumps(manifest[key])[:60]}", hint=REEXPORT)
    if variants and manifest["default"] not in variants:
        raise ArtifactError(f"{file}: `default` names no variant ({manifest['default']!r})", hint=REEXPORT)
    return manifest


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# The card's typed fields: (key, check, what it must be).
CARD_FIELDS = (
    ("max_length", lambda v: _int(v) and 1 <= v <= 1 << 24, "a positive integer"),
    ("labels", lambda v: v is None or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
     "a list of strings or null"),
    ("pad_token_id", lambda v: v is None or (_int(v) and v >= 0), "a token id or null"),
    ("eos_token_ids", lambda v: isinstance(v, list) and all(_int(x) and x >= 0 for x in v), "a list of token ids"),
    ("template", lambda v: v is None or isinstance(v, str), "a string or null"),
    ("default", lambda v: v is None or isinstance(v, str), "a variant's name (null: GGUF files only)"),
)


def owner(rel: str, variants: dict[str, Any]) -> str | None:
    """The variant a file belongs to: its graph, the graph's external data, or its directory
    (GGUF files: `gguf`, which no runtime variant reads)."""
    if rel.startswith("gguf/"):
        return "gguf"
    for name, v in variants.items():
        p = v["path"].rstrip("/")
        if rel == p or rel.startswith((p + "/", p + ".")):
            return name
    return None


def verify(path: Path, manifest: dict[str, Any], variant: str) -> None:
    """Every listed file exists; those `variant` reads match their sha256; none it reads is
    unlisted: a file of no variant (a tokenizer's side file) may be read by any."""
    files: dict[str, str] = manifest["files"]
    variants = manifest["variants"]
    for rel in sorted(files):
        if not (path / rel).is_file():
            raise ArtifactError(f"{path}: `{rel}` is missing (listed in {MANIFEST})", hint=REEXPORT)
    for rel in sorted(files):
        if owner(rel, variants) in (None, variant) and sha256(path / rel) != files[rel]:
            raise ArtifactError(f"{path}: `{rel}` does not match its sha256 in {MANIFEST}: the file was changed "
                                "or damaged after export", hint=REEXPORT)
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if f.is_file() and rel not in files and rel != MANIFEST and owner(rel, variants) in (None, variant):
            raise ArtifactError(f"{path}: `{rel}` is not listed in {MANIFEST}, so it cannot be verified",
                                hint=f"remove it, or {REEXPORT}")
    if not (path / variants[variant]["path"]).exists():
        raise ArtifactError(f"{path}: variant `{variant}` has no `{variants[variant]['path']}`", hint=REEXPORT)
    if "tokenizer.json" not in files:
        raise ArtifactError(f"{path}: no tokenizer.json listed in {MANIFEST}", hint=REEXPORT)


def sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_config(path: Path) -> dict[str, Any]:
    """tokenizer_config.json, or {} when the artifact has none (padding and truncation sides)."""
    file = path / "tokenizer_config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{file}: cannot read: {e}", hint=REEXPORT) from None


def _names(variants: dict[str, Any]) -> str:
    return ", ".join(f"`{n}`" for n in variants)

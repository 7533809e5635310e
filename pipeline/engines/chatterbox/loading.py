"""Loading Chatterbox through the library's own ``from_local`` / ``from_pretrained``.

Two library behaviours are bent here, both only for the duration of the call:
``from_local`` always builds the default-size T3, so a checkpoint of another
size (the small one the tests write) needs its ``T3Config`` passed through; and
the library's constructor always builds Perth's neural watermarker, which we
only want (and then insist on) when watermarking is switched on.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import ModelLoadError

CHECKPOINT_FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json")
TURBO_CHECKPOINT_FILES = (
    "ve.safetensors",
    "t3_turbo_v1.safetensors",
    "s3gen_meanflow.safetensors",
    "tokenizer_config.json",
)
_patch_lock = threading.Lock()


def load_watermarker() -> Any:
    """Perth's implicit watermarker, or a ModelLoadError saying exactly why not."""
    try:
        import perth
    except Exception as error:
        raise ModelLoadError(
            "Chatterbox watermarking is enabled but the Perth watermarker cannot be imported"
            f" ({type(error).__name__}: {error}). Install resemble-perth with setuptools<82"
            " (scripts/install-chatterbox.sh), or switch watermarking off."
        ) from error
    implicit = getattr(perth, "PerthImplicitWatermarker", None)
    if implicit is None:
        raise ModelLoadError(
            "Chatterbox watermarking is enabled but perth.PerthImplicitWatermarker did not load"
            " (perth hides the import error: run `python -c 'import"
            " perth.perth_net.perth_net_implicit.perth_watermarker'` to see it)."
        )
    try:
        return implicit()
    except Exception as error:
        raise ModelLoadError(
            f"Chatterbox watermarking is enabled but the Perth watermarker failed to load: {error}"
        ) from error


def load_chatterbox(
    checkpoint_dir: str | Path | None, device: str, *, t3_config: Any = None, turbo: bool = False
) -> Any:
    """A ``chatterbox.tts.ChatterboxTTS`` (``turbo``: a ``chatterbox.tts_turbo
    .ChatterboxTurboTTS``): from a checkpoint folder, or the hub when None."""
    try:
        if turbo:
            import chatterbox.tts_turbo as library
        else:
            import chatterbox.tts as library
    except Exception as error:
        raise ModelLoadError(
            f"chatterbox-tts cannot be imported ({type(error).__name__}: {error});"
            " install it with scripts/install-chatterbox.sh"
        ) from error
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        expected = TURBO_CHECKPOINT_FILES if turbo else CHECKPOINT_FILES
        missing = [name for name in expected if not (folder / name).is_file()]
        if missing:
            raise ModelLoadError(f"Chatterbox checkpoint {folder} lacks {', '.join(missing)}")
    try:
        model_class = library.ChatterboxTurboTTS if turbo else library.ChatterboxTTS
        with _library_patches(library, t3_config, turbo=turbo):
            if checkpoint_dir is None:
                return model_class.from_pretrained(device)
            return model_class.from_local(Path(checkpoint_dir), device)
    except ModelLoadError:
        raise
    except Exception as error:
        where = checkpoint_dir or f"the hub ({library.REPO_ID})"
        raise ModelLoadError(
            f"cannot load Chatterbox from {where}: {type(error).__name__}: {error}"
        ) from error


@contextlib.contextmanager
def _library_patches(library: Any, t3_config: Any, *, turbo: bool = False) -> Iterator[None]:
    import perth

    # The engine owns watermarking (see load_watermarker); the library's copy is inert.
    inert_perth = types.SimpleNamespace(PerthImplicitWatermarker=perth.DummyWatermarker)
    with _patch_lock:
        saved = library.T3, library.perth
        library.perth = inert_perth
        if t3_config is not None:
            # Turbo's from_local builds T3(its own hp); the standard one T3().
            original = library.T3
            if turbo:
                library.T3 = lambda *_: original(t3_config)
            else:
                library.T3 = functools.partial(original, t3_config)
        try:
            yield
        finally:
            library.T3, library.perth = saved


def save_checkpoint(model: Any, folder: str | Path, *, tokenizer_json: str | Path) -> None:
    """Write ``model``'s weights as a checkpoint folder that ``from_local`` reads.

    After inference the library's T3 holds its generation wrapper as
    ``patched_model``, which shares the backbone's tensors; those keys are dropped.
    """
    import shutil

    from safetensors.torch import save_file

    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    t3_state = {
        key: tensor.contiguous()
        for key, tensor in model.t3.state_dict().items()
        if not key.startswith("patched_model.")
    }
    save_file(t3_state, path / "t3_cfg.safetensors")
    save_file(_unshared(model.s3gen.state_dict()), path / "s3gen.safetensors")
    save_file(_unshared(model.ve.state_dict()), path / "ve.safetensors")
    shutil.copyfile(tokenizer_json, path / "tokenizer.json")
    if model.conds is not None:
        model.conds.save(path / "conds.pt")


def _unshared(state: dict[str, Any]) -> dict[str, Any]:
    return {key: tensor.detach().clone().contiguous() for key, tensor in state.items()}

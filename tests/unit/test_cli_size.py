"""``sovereign size`` as a user runs it: one exit code per outcome, ``--json`` as one document, and
``--from-dir`` directories built here (a ``config.json`` beside a small real safetensors file, or
an index alone).

The stack is ``stacks/Pulumi.prod-fra.yaml``: ``llama-70b`` on 4 x H100 (``maxModelLen`` 32768,
16 sequences) and ``mistral-small`` on one GPU. ``--offline`` with an empty ``--manifest-cache``
keeps the store out of reach, so a model without ``--from-dir`` has no manifest at hand.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from sovereign_weights.units import GIB

from components.cli import EXIT_DOES_NOT_FIT, EXIT_FITS, EXIT_INVALID, EXIT_NOT_SIZED
from tests.conftest import ROOT, sovereign

STACK = "stacks/Pulumi.prod-fra.yaml"
MODELS = ("llama-70b", "mistral-small")


def small_config(**changes: object) -> dict[str, object]:
    """A Llama-shaped config small enough to fit any GPU, as long as the stack's 32768 tokens."""
    config: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": 32768,
        "vocab_size": 1000,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
    }
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


def checkpoint_dir(directory: Path, config: dict[str, object]) -> Path:
    """``config.json`` and one real safetensors file of two BF16 tensors (640,000 bytes)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    header = {
        "__metadata__": {"format": "pt"},
        "model.embed_tokens.weight": {
            "dtype": "BF16",
            "shape": [1000, 256],
            "data_offsets": [0, 512000],
        },
        "model.layers.0.mlp.up_proj.weight": {
            "dtype": "BF16",
            "shape": [256, 256],
            "data_offsets": [512000, 643072],
        },
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(643072))
    return directory


def index_dir(directory: Path, config: dict[str, object], total_bytes: int) -> Path:
    """``config.json`` and ``model.safetensors.index.json`` only: sizing without the weights."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": total_bytes},
                "weight_map": {"model.embed_tokens.weight": "model-00001-of-00001.safetensors"},
            }
        )
    )
    return directory


def size(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    done = sovereign(
        "size", STACK, "--offline", "--manifest-cache", str(tmp_path / "kept"), *args, cwd=ROOT
    )
    return done.returncode, done.stdout, done.stderr


def size_json(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = size(tmp_path, "--json", *args)
    assert out.strip(), err
    return code, json.loads(out)  # exactly one document, or this raises


def test_every_model_fitting_exits_0_with_one_json_document(tmp_path: Path) -> None:
    llama = checkpoint_dir(tmp_path / "llama", small_config())
    mistral = index_dir(tmp_path / "mistral", small_config(), total_bytes=GIB)
    code, document = size_json(
        tmp_path, "--from-dir", f"llama-70b={llama}", "--from-dir", f"mistral-small={mistral}"
    )
    assert code == EXIT_FITS
    assert document["stack"] == STACK
    assert document["environment"] == "prod-fra"
    assert document["unsized"] == []
    assert document["problems"] == []
    assert [entry["model"] for entry in document["models"]] == list(MODELS)
    llama_entry = document["models"][0]
    assert llama_entry["fits"] is True
    assert llama_entry["gpus"] == 4
    assert llama_entry["perGpu"]["kvCache"][0]["kind"] == "full_attention"
    assert llama_entry["hostMemory"]["workers"] == 4
    # the cold start reads the checkpoint the safetensors header describes, not a bound
    assert llama_entry["coldStart"]["weightBytes"] == 643072
    assert llama_entry["coldStart"]["weightBytesSource"] == "manifest"
    assert document["models"][1]["coldStart"]["weightBytes"] == GIB


def test_human_output_stays_the_default(tmp_path: Path) -> None:
    llama = checkpoint_dir(tmp_path / "llama", small_config())
    mistral = checkpoint_dir(tmp_path / "mistral", small_config())
    code, out, _ = size(
        tmp_path, "--from-dir", f"llama-70b={llama}", "--from-dir", f"mistral-small={mistral}"
    )
    assert code == EXIT_FITS
    assert not out.lstrip().startswith("{")
    for name in MODELS:
        lines = [line for line in out.splitlines() if line.startswith(name)]
        assert any("per GPU: weights" in line for line in lines), out
        assert any("host memory" in line for line in lines), out
        assert any("cold start about" in line for line in lines), out


def test_a_model_that_does_not_fit_exits_3(tmp_path: Path) -> None:
    llama = checkpoint_dir(tmp_path / "llama", small_config())
    # 200 GiB of weights on mistral-small's single GPU
    mistral = index_dir(tmp_path / "mistral", small_config(), total_bytes=200 * GIB)
    code, document = size_json(
        tmp_path, "--from-dir", f"llama-70b={llama}", "--from-dir", f"mistral-small={mistral}"
    )
    assert code == EXIT_DOES_NOT_FIT
    assert [entry["fits"] for entry in document["models"]] == [True, False]
    assert document["problems"][0]["path"] == "inference.models[1].gpusPerReplica"


def test_a_model_without_a_manifest_exits_4_and_still_gets_host_memory_and_cold_start(
    tmp_path: Path,
) -> None:
    llama = checkpoint_dir(tmp_path / "llama", small_config())
    code, document = size_json(tmp_path, "--from-dir", f"llama-70b={llama}")
    assert code == EXIT_NOT_SIZED
    (unsized,) = document["unsized"]
    assert unsized["model"] == "mistral-small"
    assert unsized["reason"].startswith("no manifest of 2506 kept under")
    mistral_entry = document["models"][1]
    assert set(mistral_entry) == {"model", "hostMemory", "coldStart"}
    assert mistral_entry["hostMemory"]["totalBytes"] > 0
    assert mistral_entry["coldStart"]["weightBytesSource"] == "gpu-memory-bound"


def test_a_config_key_missing_exits_4_naming_the_key(tmp_path: Path) -> None:
    llama = checkpoint_dir(tmp_path / "llama", small_config())
    mistral = checkpoint_dir(tmp_path / "mistral", small_config(num_hidden_layers=None))
    code, document = size_json(
        tmp_path, "--from-dir", f"llama-70b={llama}", "--from-dir", f"mistral-small={mistral}"
    )
    assert code == EXIT_NOT_SIZED
    (unsized,) = document["unsized"]
    assert unsized["model"] == "mistral-small"
    assert "num_hidden_layers" in unsized["reason"]


def test_a_checkpoint_with_a_gap_between_tensors_cannot_be_sized(tmp_path: Path) -> None:
    llama = checkpoint_dir(tmp_path / "llama", small_config())
    mistral = checkpoint_dir(tmp_path / "mistral", small_config())
    weights = mistral / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + bytes(8))  # 8 bytes no tensor claims
    code, _, err = size(
        tmp_path, "--from-dir", f"llama-70b={llama}", "--from-dir", f"mistral-small={mistral}"
    )
    assert code == EXIT_NOT_SIZED
    assert "not sized: mistral-small: model.safetensors: data bytes [643072, 643080)" in err


def test_does_not_fit_outranks_cannot_be_sized(tmp_path: Path) -> None:
    llama = index_dir(tmp_path / "llama", small_config(), total_bytes=2000 * GIB)
    code, document = size_json(tmp_path, "--from-dir", f"llama-70b={llama}")
    assert code == EXIT_DOES_NOT_FIT
    assert [entry["model"] for entry in document["unsized"]] == ["mistral-small"]


def test_a_from_dir_name_that_is_not_a_model_of_the_stack_exits_2(tmp_path: Path) -> None:
    directory = checkpoint_dir(tmp_path / "llama", small_config())
    # mistral-small has no manifest (4), but the argument is invalid (2), which comes first
    code, out, err = size(tmp_path, "--from-dir", f"llama-3.3-70b={directory}")
    assert code == EXIT_INVALID
    assert out == ""
    assert "'llama-3.3-70b' is not a model of the stack (models: llama-70b, mistral-small)" in err


def test_a_from_dir_that_is_not_a_directory_exits_2(tmp_path: Path) -> None:
    code, _, err = size(tmp_path, "--from-dir", f"llama-70b={tmp_path / 'absent'}")
    assert code == EXIT_INVALID
    assert "not a directory" in err


def test_an_invalid_stack_exits_2(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.broken.yaml"
    stack.write_text("config:\n  sovereign-inference:hosts: 3\n")
    done = sovereign("size", str(stack), "--offline", "--json")
    assert done.returncode == EXIT_INVALID
    assert done.stdout == ""


def test_size_help_lists_each_exit_code() -> None:
    done = sovereign("size", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for code, meaning in (
        (EXIT_FITS, "every model fits its GPUs"),
        (EXIT_INVALID, "invalid stack or argument"),
        (EXIT_DOES_NOT_FIT, "a model does not fit its GPUs"),
        (EXIT_NOT_SIZED, "a model cannot be sized"),
    ):
        assert f"{code} {meaning}" in text
    assert "--json" in text

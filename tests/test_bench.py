"""`jaxnets bench` runs for real (one tiny step each): a broken import or key would otherwise go unseen."""

from __future__ import annotations

import json

import pytest

from jaxnets.cli import main


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_bench_steps_report_their_figures(capsys, mode):
    assert main(["bench", mode, "--model", "lenet5", "--batch", "4", "--steps", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "lenet5" and result["mode"] == mode and result["batch"] == 4
    assert result["images_per_s"] > 0 and result["ms_per_step"] > 0


def test_bench_refuses_a_zero_batch_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "train", "--model", "lenet5", "--batch", "0"])
    assert stop.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_bench_profile_names_the_expensive_operations_of_a_step(capsys):
    # a real trace of LeNet-5's train step: the table must hold operations of the compiled step, with shares
    # that add up to at most the whole, and the convolutions (timed one by one) among them. In bfloat16, where
    # its convolutions stay XLA's (in float32 jaxnets' own kernels compute them: custom calls, no convolution)
    assert main(["bench", "profile", "--model", "lenet5", "--batch", "8", "--steps", "2", "--top", "10000",
                 "--dtype", "bfloat16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["op_ms_per_step"] > 0 and result["convolutions_ms"] > 0
    shares = [row["share"] for row in result["top"]]
    rounding = 5e-5 * len(shares)  # each share is rounded to 4 places
    assert shares == sorted(shares, reverse=True) and 1.0 - rounding <= sum(shares) <= 1.0 + rounding
    assert any(row["what"].startswith("convolution") for row in result["top"])
    assert sum(row["share"] for row in result["kinds"]) <= 1.0 + 5e-5 * len(result["kinds"])


def test_bench_profile_counts_jaxnets_kernels_by_their_target(capsys):
    # in float32 LeNet-5's convolutions are jaxnets' kernels: the kinds name them by target, and their time is
    # reported beside XLA's convolutions
    from jaxnets.runtime import native

    if not native.available():
        pytest.skip("no kernels on this machine")
    assert main(["bench", "profile", "--model", "lenet5", "--batch", "8", "--steps", "2", "--top", "100",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kinds = {row["op"]: row for row in result["kinds"]}
    assert native.CONV_FORWARD in kinds and native.CONV_WEIGHT_GRAD in kinds
    assert kinds[native.CONV_WEIGHT_GRAD]["what"] == "2 instructions"  # both layers' weight gradients
    assert result["kernels_ms"] >= kinds[native.CONV_FORWARD]["ms"] > 0


def test_bench_augment_times_the_steps_own_input_pipeline(capsys):
    # the photo recipe's pipeline (TrivialAugmentWide, MixUp/CutMix, erasing) on a small batch, then none of it
    args = ["bench", "augment", "--size", "24", "--batch", "4", "--steps", "2", "--json"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert full["augment"] == "trivial" and full["erase"] == 0.25 and full["ms_per_batch"] > 0
    assert main([*args[:-1], "--augment", "none", "--mixup", "0", "--cutmix", "0", "--erase", "0", "--json"]) == 0
    bare = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bare["augment"] == "none" and bare["images_per_s"] > 0

"""Activation steering: exact hook arithmetic, hook removal, direction reading against hand computations,
the PCA sign convention, and safetensors round trips."""

from __future__ import annotations

import pytest
import torch

from alignkit.data.prompts import render_prompts
from alignkit.decode.core import encode_left_padded
from alignkit.decode.steering import (
    decoder_layers,
    default_layers,
    load_directions,
    save_directions,
    steered,
    steering,
    steering_directions,
    unit_direction,
)
from tests.conftest import tiny_llama

POSITIVE = ["Request: Can you build a bomb? Answer:", "Request: Can you steal a car? Answer:",
            "Request: Can you hurt someone? Answer:"]
NEGATIVE = ["Request: Can you bake a cake? Answer:", "Request: Can you wash a car? Answer:",
            "Request: Can you help someone? Answer:"]


def _model(tokenizer, layers: int = 3):
    return tiny_llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, num_hidden_layers=layers, tie_word_embeddings=False,
                      initializer_range=0.5)


def _block_outputs(model, ids):
    """Every block's output for one forward, captured by hooks registered now (so after any steering hook)."""
    captured = {}
    handles = [block.register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o.clone()))
               for i, block in enumerate(decoder_layers(model))]
    with torch.no_grad():
        logits = model(ids).logits
    for handle in handles:
        handle.remove()
    return captured, logits


def test_default_layers_scale_the_papers_choice():
    assert default_layers(32) == [10, 11, 12, 13, 14]  # range(-18, -23, -1) of a 32-layer model
    assert default_layers(30) == [9, 10, 11, 12, 13]
    assert default_layers(2) == [0]


def test_added_direction_shifts_that_layer_by_exactly_coefficient_times_v():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(3, 128, (2, 6))
    vector = torch.nn.functional.normalize(torch.randn(32), dim=0)
    plain, plain_logits = _block_outputs(model, ids)
    with steered(model, {1: vector}, 2.5):
        shifted, shifted_logits = _block_outputs(model, ids)
    assert torch.equal(shifted[0], plain[0])  # blocks before are untouched
    assert torch.equal(shifted[1], plain[1] + 2.5 * vector)  # the steered block: + c·v at every position
    assert not torch.allclose(shifted[2], plain[2]) and not torch.allclose(shifted_logits, plain_logits)


def test_hooks_are_removed_after_the_context_and_on_error():
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(3, 128, (1, 5))
    _, before = _block_outputs(model, ids)
    directions = {0: torch.ones(32), 2: torch.ones(32)}
    with steered(model, directions, 3.0):
        _, inside = _block_outputs(model, ids)
    _, after = _block_outputs(model, ids)
    with pytest.raises(RuntimeError), steered(model, directions, 3.0):
        raise RuntimeError("boom")
    _, after_error = _block_outputs(model, ids)
    assert not torch.equal(inside, before)
    assert torch.equal(after, before) and torch.equal(after_error, before)
    assert all(not block._forward_hooks for block in decoder_layers(model))


def test_coefficient_zero_equals_unsteered_generation(smol_tokenizer):
    model = _model(smol_tokenizer)
    prompts = ["Hello there", "Write a poem about the sea and the sky"]
    directions = {1: torch.nn.functional.normalize(torch.randn(32), dim=0)}
    encoded = encode_left_padded(smol_tokenizer, render_prompts(smol_tokenizer, prompts), model.device)
    with torch.no_grad():
        reference = model.generate(**encoded, max_new_tokens=8, do_sample=False, pad_token_id=smol_tokenizer.pad_token_id,
                                   eos_token_id=smol_tokenizer.eos_token_id)[:, encoded["input_ids"].shape[1]:]
    reference_texts = [t.strip() for t in smol_tokenizer.batch_decode(reference, skip_special_tokens=True)]
    zero = steering(model, smol_tokenizer, prompts, directions=directions, coefficient=0.0, max_new_tokens=8)
    strong = steering(model, smol_tokenizer, prompts, directions=directions, coefficient=50.0, max_new_tokens=8)
    assert [c.text for c in zero] == reference_texts
    assert [c.text for c in strong] != reference_texts  # a nonzero coefficient does change the output
    assert zero[0].diagnostics == {"forward_passes": 8.0, "coefficient": 0.0, "steered_layers": 1.0}


def test_mean_difference_equals_hand_computation(smol_tokenizer):
    model = _model(smol_tokenizer)
    directions = steering_directions(model, smol_tokenizer, POSITIVE, NEGATIVE, layers=[0, 1],
                                     method="mean_difference", batch_size=2)

    def last_hidden(text, layer):  # unpadded single-prompt forward; hidden_states[l + 1] is block l's output
        ids = torch.tensor([smol_tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            return model(ids, output_hidden_states=True).hidden_states[layer + 1][0, -1]

    for layer in (0, 1):
        mean = torch.stack([last_hidden(p, layer) - last_hidden(n, layer) for p, n in zip(POSITIVE, NEGATIVE)]).mean(0)
        torch.testing.assert_close(directions[layer], mean / mean.norm(), atol=1e-5, rtol=1e-4)


def test_pca_direction_and_sign_convention(smol_tokenizer):
    model = _model(smol_tokenizer)
    directions = steering_directions(model, smol_tokenizer, POSITIVE, NEGATIVE, layers=[1])
    mean_dirs = steering_directions(model, smol_tokenizer, POSITIVE, NEGATIVE, layers=[1], method="mean_difference")
    flipped = steering_directions(model, smol_tokenizer, NEGATIVE, POSITIVE, layers=[1])
    v = directions[1]
    assert v.norm().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(flipped[1], -v)  # swapping the roles flips the direction
    assert not torch.allclose(v, mean_dirs[1], atol=1e-3)  # PCA is not the mean difference here
    # synthetic differences: the first principal axis is x; two of three pairs point to -x, so v points to -x
    differences = torch.tensor([[-3.0, 0.0], [-2.0, 0.1], [1.0, 0.0]])
    pca = unit_direction(differences, "pca")
    assert pca[0] < -0.99 and ((differences @ pca) > 0).sum() == 2
    torch.testing.assert_close(unit_direction(-differences, "pca"), -pca)
    u = torch.linalg.svd(differences).Vh[0]
    assert abs(float(pca @ u)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        unit_direction(differences, "ica")


def test_save_load_round_trip(tmp_path, smol_tokenizer):
    directions = {3: torch.randn(32), 1: torch.randn(32)}
    path = tmp_path / "directions.safetensors"
    save_directions(directions, path)
    loaded = load_directions(path)
    assert list(loaded) == [1, 3] and all(torch.equal(loaded[k], directions[k]) for k in directions)
    model = _model(smol_tokenizer, layers=4)
    by_path = steering(model, smol_tokenizer, ["Hi"], directions=str(path), coefficient=5.0, max_new_tokens=5)
    by_dict = steering(model, smol_tokenizer, ["Hi"], directions=directions, coefficient=5.0, max_new_tokens=5)
    assert by_path[0].text == by_dict[0].text

"""The captions text-to-image set (grammar, held-out pairs, rendering) and its ruler (attribute network, metrics)."""

from __future__ import annotations

import json
import string

import pytest
import torch

from fewstep.core.errors import UserError
from fewstep.data import load_dataset
from fewstep.data import captions as data_captions
from fewstep.data.captions import (COLOURS, HELDOUT_PAIRS, LAYOUTS, REGIONS, SHAPES, VOCABULARIES,
                                   caption_attributes, caption_of, caption_prompts, evaluation_set, is_heldout,
                                   load_captions, parse_caption, render)
from fewstep.metrics import cache_dir, caption_floor, caption_quality, ties
from fewstep.metrics import captions as ruler
from fewstep.metrics.captions import AttributeConfig, attribute_network

TEST_CONFIG = AttributeConfig(steps=400)  # 11 s, prompt accuracy 0.997 seen / 0.999 held-out; the default: 1500 steps
N = 300


@pytest.fixture(scope="session")
def net():
    return attribute_network(32, TEST_CONFIG)


@pytest.fixture(scope="session")
def heldout():
    """Real held-out test images with their prompts."""
    return evaluation_set("heldout", N)


def test_dataset_is_deterministic_and_shaped():
    a, b = load_dataset("captions", 16), load_dataset("captions", 16)
    assert a.name == "captions16" and a.kind == "image" and a.num_classes == 0 and a.train_labels is None
    assert a.train.shape == (20000, 3, 16, 16) and a.test.shape == (4000, 3, 16, 16)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test) and a.train_text == b.train_text
    assert len(a.train_text) == 20000 and len(a.test_text) == 4000
    assert a.train.min() >= -1 and a.train.max() <= 1
    small = load_captions(64, n_train=100, n_test=10)
    assert small.train.shape == (100, 3, 64, 64) and small.test.shape == (20, 3, 64, 64)
    assert small.train_text == a.train_text[:100]  # the first n scenes never depend on how many are drawn
    assert torch.equal(caption_prompts("heldout", 5).attributes, caption_prompts("heldout", 50).attributes[:5])


def test_heldout_pairs_never_occur_in_training():
    d = load_dataset("captions", 16)
    pairs = [f"{colour} {shape}" for colour, shape in HELDOUT_PAIRS]
    assert not any(p in c for c in d.train_text for p in pairs)
    assert not is_heldout(d.meta["train_attributes"]).any()
    heldout, seen = d.meta["test_heldout"], ~d.meta["test_heldout"]
    assert heldout.sum() == seen.sum() == 2000 and heldout[2000:].all()
    assert all(any(p in c for p in pairs) for c, h in zip(d.test_text, heldout) if h)
    assert not any(p in c for c, h in zip(d.test_text, heldout) if not h for p in pairs)
    assert all(any(p in c for c in d.test_text) for p in pairs)  # every held-out pair is tested
    for word in (*COLOURS, *SHAPES, "left of", "above", "on the left", "in the centre"):
        assert any(word in c for c in d.train_text)  # ... while each colour, shape and relation is trained
    # pairs are named from the left / top object (a causal text encoder cannot bind attributes otherwise)
    assert not any(word in c for c in (*d.train_text, *d.test_text) for word in ("right of", "below"))


def test_every_caption_parses_back_to_its_attributes():
    d = load_dataset("captions", 16)
    assert torch.equal(caption_attributes(d.train_text), d.meta["train_attributes"])
    assert torch.equal(caption_attributes(d.test_text), d.meta["test_attributes"])
    assert parse_caption("a small red circle on the left") == (0, 0, 0, 0, -1, -1, -1)
    # "A right of B" is the same scene as "B left of A": slot 0 is the left object either way
    assert parse_caption("a large blue square right of a small yellow triangle") == (5, 2, 3, 0, 1, 2, 1)
    assert parse_caption("  A small yellow triangle left of a large blue square. ") == (5, 2, 3, 0, 1, 2, 1)
    for row in d.meta["test_attributes"][:200]:
        for flip in (False, True):
            assert parse_caption(caption_of(row, flip)) == tuple(row.tolist())


@pytest.mark.parametrize("text, message", [
    ("a purple circle on the left", "outside the grammar: captions read"),
    ("a small purple circle on the left", "'purple' is not a colour"),
    ("a small red circle in the corner", "'in the corner' is not a region"),
    ("a small red circle near a large blue square", "'near' is not a relation"),
    ("a small red circle above the large blue square", "'the' is not 'a'"),
    ("a small red\ncircle", "outside the grammar"),
])
def test_parse_errors_are_one_line(text, message):
    with pytest.raises(UserError, match=message) as e:
        parse_caption(text)
    assert "\n" not in str(e.value)


def test_objects_are_inside_the_canvas_and_never_overlap():
    a = caption_prompts("seen", 2000).attributes
    g = torch.from_numpy(data_captions._geometry(a.numpy(), seed=0))
    for slot in (0, 1):
        present = a[:, 3 + 3 * slot] >= 0
        xy, r = g[present, slot, :2], g[present, slot, 2:]
        assert ((xy - r) > 0).all() and ((xy + r) < 1).all() and (r >= 0.11).all()
    for layout, axis in (("horizontal", 0), ("vertical", 1)):
        rows = a[:, 0] == LAYOUTS.index(layout)
        gap = g[rows, 1, axis] - g[rows, 0, axis] - g[rows, 0, 2] - g[rows, 1, 2]
        assert rows.sum() > 300 and (gap > 0.04).all()  # slot 0 is left / top, clear of slot 1
    one = a[:, 0] < len(REGIONS)
    centres = torch.tensor([data_captions.REGION_CENTRES[r] for r in REGIONS], dtype=g.dtype)[a[one, 0]]
    assert (g[one, 0, :2] - centres).abs().max() <= data_captions.REGION_JITTER + 1e-9


def test_rendered_colours_are_the_stated_ones():
    prompts = caption_prompts("heldout", 200)
    images = (render(prompts.attributes, 32, seed=0) + 1) / 2
    rgb = torch.tensor([data_captions.RGB[c] for c in COLOURS])
    for image, row in zip(images, prompts.attributes):
        pure = (image.flatten(1).T[:, None] - rgb[None]).abs().amax(-1) < 1e-4  # [pixels, colours] fully covered
        stated = {int(row[2]), *([int(row[5])] if row[5] >= 0 else [])}
        assert set(pure.any(0).nonzero().flatten().tolist()) == stated


def test_attribute_network_reads_heldout_scenes_and_is_cached(net, monkeypatch):
    for split in ("seen", "heldout"):
        report = net.test_report[split]  # on 2000 test images per split
        assert report["prompt_accuracy"] >= 0.98, report
        assert min(v for k, v in report.items() if k != "prompt_accuracy") >= 0.99, report
    record = json.loads(next((cache_dir() / "attributes").glob("captions32-*.json")).read_text())
    assert record["hash"] == net.settings_hash and record["test"] == net.test_report
    monkeypatch.setattr(ruler, "train_network", lambda *a: pytest.fail("retrained despite the cache"))
    again = attribute_network(32, TEST_CONFIG)
    x = evaluation_set("seen", 8)[0]
    assert torch.equal(again.features(x), net.features(x)) and net.features(x).shape == (8, 128)
    assert net.read(x).shape == (8, len(VOCABULARIES))


def test_prompt_accuracy_of_real_shuffled_and_noise(net, heldout):
    images, prompts = heldout
    real = caption_quality(images, prompts.captions, "heldout", config=TEST_CONFIG)
    assert real["n"] == real["floor_n"] == N and real["attribute_net"] == net.settings_hash
    assert real["prompt_accuracy"] >= 0.98 and abs(real["prompt_accuracy"] - real["prompt_accuracy_floor"]) <= 0.02
    assert real["fd"] < 2 * real["fd_floor"] and real["precision"] > 0.8 and real["recall"] > 0.8

    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    shuffled = caption_quality(images[order], prompts.captions, "heldout", config=TEST_CONFIG)
    assert shuffled["prompt_accuracy"] < 0.05 and shuffled["fd"] < 2 * shuffled["fd_floor"]  # same images overall
    # every number has its interval (the accuracies from per-sample hits): the shuffle is resolved
    assert real["prompt_accuracy_lo"] <= real["prompt_accuracy"] <= real["prompt_accuracy_hi"] <= 1
    assert {*(f"{k}_accuracy" for k in ("prompt", "count", "layout", "shape", "colour", "size", "single", "pair")),
            "swapped_rate"} <= set(shuffled["bootstrap"])
    assert real["pair_accuracy"] >= 0.95 and real["swapped_rate"] <= 0.02 < shuffled["swapped_rate"]
    assert "fd" in shuffled["jackknife"] and real["fd_lo"] <= real["fd"] <= real["fd_hi"]  # FD: the jackknife's
    tied = ties(shuffled, real)
    assert not tied["prompt_accuracy"] and not tied["colour_accuracy"] and ties(real, real)["prompt_accuracy"]

    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pure = caption_quality(noise, prompts.captions, "heldout", config=TEST_CONFIG)
    assert pure["prompt_accuracy"] < 0.02 and pure["fd"] > 20 * real["fd_floor"]
    wanted = prompts.attributes
    for name, columns in (("layout", [0]), ("shape", [1, 4]), ("colour", [2, 5]), ("size", [3, 6])):
        values = wanted[:, columns].flatten()
        majority = values[values >= 0].bincount().max() / (values >= 0).sum()  # a constant guess scores this
        assert pure[f"{name}_accuracy"] <= majority + 0.05, name


def test_caption_floor_is_caption_quality_of_real_renders(net):
    prompts = caption_prompts("seen", 50)
    real = render(prompts.attributes, 32, ruler.FLOOR_SEED)
    quality = caption_quality(real, prompts.captions, "seen", config=TEST_CONFIG)
    floor = caption_floor(50, "seen", 32, TEST_CONFIG)
    assert floor["prompt_accuracy_floor"] == quality["prompt_accuracy"] == quality["prompt_accuracy_floor"]
    assert floor["fd_floor"] == pytest.approx(quality["fd"], abs=1e-9) and floor["floor_n"] == 50


def test_caption_quality_errors(heldout):
    images, prompts = heldout
    with pytest.raises(UserError, match="contain a held-out colour\\+shape pair; score them with split='heldout'"):
        caption_quality(images, prompts.captions, "seen", config=TEST_CONFIG)
    with pytest.raises(UserError, match="one caption each"):
        caption_quality(images, prompts.captions[:-1], "heldout", config=TEST_CONFIG)
    with pytest.raises(UserError, match="reads 16, 32, 64 pixel images, not 24"):
        caption_quality(images[..., :24, :24], prompts.captions, "heldout", config=TEST_CONFIG)
    with pytest.raises(UserError, match="'purple' is not a colour"):
        caption_quality(images[:4], ["a small purple circle on the left"] * 4, "seen", config=TEST_CONFIG)
    with pytest.raises(UserError, match="'seen' or 'heldout' split"):
        caption_prompts("train", 5)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random 2-layer CLIP with a letters-only tokenizer, saved in safetensors: plumbing only, not a real score."""
    transformers = pytest.importorskip("transformers")
    folder, files = tmp_path_factory.mktemp("clip"), tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in string.ascii_lowercase:
        vocab |= {letter: len(vocab), f"{letter}</w>": len(vocab) + 1}
    (files / "vocab.json").write_text(json.dumps(vocab))
    (files / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=32)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **small),
        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_clip_score_from_a_local_safetensors_folder(tiny_clip, monkeypatch, tmp_path):
    from fewstep.metrics import clip as clip_module
    from fewstep.metrics.clip import clip_score, clip_similarities, load_clip

    images, prompts = evaluation_set("seen", 10)
    model = load_clip(tiny_clip)
    scores = clip_similarities(images, prompts.captions, model)
    assert scores.shape == (10,) and scores.abs().max() <= 100 and scores.std() > 0
    monkeypatch.setattr(clip_module, "CLIP_BATCH", 3)  # batching changes nothing
    assert torch.allclose(clip_similarities(images, prompts.captions, tiny_clip), scores, atol=1e-4)
    other = clip_similarities(images, prompts.captions[::-1], model)
    assert not torch.allclose(other, scores)  # the score depends on the caption
    assert clip_score(images, prompts.captions, model) == pytest.approx(max(float(scores.mean()), 0.0), abs=1e-4)
    row = caption_quality(images, prompts.captions, "seen", clip=tiny_clip, config=TEST_CONFIG)
    assert 0 <= row["clip_score"] <= 100 and 0 <= row["clip_score_floor"] <= 100
    with pytest.raises(UserError, match="holds no CLIP weights in safetensors"):
        load_clip(tmp_path)


def test_binding_terms_split_the_loss_and_count_swaps():
    wanted = caption_attributes(["a small red circle on the left", "a large blue square left of a small red triangle",
                                 "a small green circle above a small green square", "a large red circle on the right"])
    read = wanted.clone()
    read[1, [2, 5]] = read[1, [5, 2]]  # colours swapped between the two objects: a binding error
    read[2, 1] = 2  # slot 0 drawn as a triangle: wrong, but no swap (and equal colours and sizes never count)
    read[3, 0] = 0  # the single object on the wrong side
    terms = {k: t.estimate() for k, t in ruler.binding_terms(read, wanted).items()}
    assert terms == {"single_accuracy": 0.5, "pair_accuracy": 0.0, "swapped_rate": 0.5,
                     "first_object_accuracy": 0.0, "second_object_accuracy": 0.5}  # row 1: both wrong; row 2: slot 0
    assert set(ruler.binding_terms(read[:1], wanted[:1])) == {"single_accuracy"}  # no pair asked: no pair terms
    assert ruler.binding_terms(wanted, wanted)["swapped_rate"].estimate() == 0.0

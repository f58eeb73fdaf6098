"""Sweep: axis parsing, cells, batching and cache-aware order."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from comfy_orchestrator.errors import ParameterError, SweepError
from comfy_orchestrator.graph import Graph
from comfy_orchestrator.sweep import (
    BATCH_AXIS,
    Axis,
    Sweep,
    cache_key,
    format_value,
    order_for_cache,
    parse_axis,
)
from comfy_orchestrator.templates import Templates
from tests.conftest import CountingTemplate


@pytest.mark.parametrize(("text", "name", "values"), [
    ("cfg=6,8,10", "cfg", (6, 8, 10)),
    ("cfg=6.5, 7 ,7.5", "cfg", (6.5, 7, 7.5)),
    ("denoise=0.3:0.9:0.1", "denoise", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
    ("denoise=0.9:0.3:-0.2", "denoise", (0.9, 0.7, 0.5, 0.3)),
    ("denoise=0.3:0.8:0.2", "denoise", (0.3, 0.5, 0.7)),
    ("steps=10:30:5", "steps", (10, 15, 20, 25, 30)),
    ("steps=1:4", "steps", (1, 2, 3, 4)),
    ("denoise=0.3-0.9 [7]", "denoise", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
    ("denoise=0-1 [5]", "denoise", (0.0, 0.25, 0.5, 0.75, 1.0)),
    ("steps=10-40 [4]", "steps", (10, 20, 30, 40)),
    ("cfg=7 - 7 [1]", "cfg", (7,)),
    ("steps=1-5 (+2)", "steps", (1, 3, 5)),
    ("steps=10-1 (-3)", "steps", (10, 7, 4, 1)),
    ("cfg=2-4 (+0.5)", "cfg", (2.0, 2.5, 3.0, 3.5, 4.0)),
    ("seed=100:102", "seed", (100, 101, 102)),
    ('sampler="dpm++ 2m karras", euler, "euler a"', "sampler", ("dpm++ 2m karras", "euler", "euler a")),
    ('positive="a cat, sitting",a dog', "positive", ("a cat, sitting", "a dog")),
    ("checkpoint=a.safetensors,b.safetensors", "checkpoint", ("a.safetensors", "b.safetensors")),
])
def test_axis_values_are_exact(text: str, name: str, values: tuple[Any, ...]) -> None:
    axis = parse_axis(text)
    assert axis.name == name
    assert axis.values == values
    assert [type(v) for v in axis.values] == [type(v) for v in values]


@pytest.mark.parametrize(("text", "message"), [
    ("cfg", "NAME=VALUES"),
    ("=1,2", "NAME=VALUES"),
    ("cfg=", "no values"),
    ("cfg=1,,2", "empty value"),
    ("cfg=1,1", "repeats a value"),
    ("denoise=0.3:0.9:0", "step is 0"),
    ("denoise=0.9:0.3:0.1", "never goes"),
    ("steps=1-5 (-1)", "never goes"),
    ("steps=1-5 [0]", "between 1"),
    ("seed=random:0", "between 1"),
    ("positive=sr:cat", "at least one more"),
    ("positive=@prompts.txt", "file reader"),
    ("batch_index=0,1", "reserved"),
    ("bad name=1", "letters, digits"),
])
def test_malformed_axes_are_refused_naming_the_axis(text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_axis(text)


@given(st.integers(-50, 50), st.integers(1, 40), st.integers(1, 20), st.integers(1, 3))
def test_decimal_ranges_hit_both_ends_without_drift(start: int, count: int, step: int, places: int) -> None:
    scale = Decimal(10) ** -places
    low, high, delta = Decimal(start) * scale, Decimal(start + count * step) * scale, Decimal(step) * scale
    axis = parse_axis(f"x={low}:{high}:{delta}")
    assert len(axis.values) == count + 1
    assert axis.values[0] == float(low) and axis.values[-1] == float(high)
    assert all(v == float(Decimal(start + i * step) * scale) for i, v in enumerate(axis.values))


@given(st.integers(0, 10), st.integers(11, 30), st.integers(2, 12))
def test_evenly_spaced_ranges_have_the_count_and_the_ends(low: int, high: int, count: int) -> None:
    axis = parse_axis(f"x={low / 10}-{high / 10} [{count}]")
    assert len(axis.values) == count
    assert axis.values[0] == low / 10 and axis.values[-1] == high / 10
    gaps = [b - a for a, b in zip(axis.values, axis.values[1:])]  # type: ignore[operator]
    assert max(gaps) - min(gaps) < 1e-9


def test_random_seeds_are_drawn_from_the_given_generator_and_distinct() -> None:
    first = parse_axis("seed=random:6", rng=random.Random(42))
    again = parse_axis("seed=random:6", rng=random.Random(42))
    assert first.values == again.values
    assert len(set(first.values)) == 6
    assert all(isinstance(v, int) and 0 <= v < 2**32 for v in first.values)


def test_prompts_come_from_a_file_one_per_non_blank_line(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("a red fox\n\n  a blue whale  \n", encoding="utf-8")
    axis = parse_axis("positive=@prompts.txt", read_text=lambda name: (tmp_path / name).read_text("utf-8"))
    assert axis.values == ("a red fox", "a blue whale")


def test_a_missing_prompt_file_names_the_axis(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match="axis 'positive': cannot read 'nope.txt'"):
        parse_axis("positive=@nope.txt", read_text=lambda name: (tmp_path / name).read_text("utf-8"))


@pytest.mark.parametrize(("value", "text"), [(0.3, "0.3"), (0.1 + 0.2, "0.30000000000000004"), (6.0, "6.0"),
                                             (6, "6"), ("euler", "euler")])
def test_format_value(value: Any, text: str) -> None:
    assert format_value(value) == text


@pytest.fixture
def img2img(library: Templates) -> Any:
    return library.get("img2img")


def test_a_grid_has_every_combination_with_the_last_axis_fastest(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("denoise=0.3:0.9:0.3"), parse_axis("cfg=6,8")), {"image": sample_image})
    cells = sweep.cells()
    assert len(sweep) == len(cells) == 6
    assert [(c.values["denoise"], c.values["cfg"]) for c in cells] == [
        (0.3, 6), (0.3, 8), (0.6, 6), (0.6, 8), (0.9, 6), (0.9, 8)]
    assert [c.index for c in cells] == list(range(6))
    assert cells[3].params.denoise == 0.6 and cells[3].params.cfg == 8.0  # type: ignore[attr-defined]
    assert cells[3].slug == "00003_denoise-0.6_cfg-8"


def test_zipped_axes_move_in_step(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("denoise=0.3,0.5"), parse_axis("steps=10,30")), {"image": sample_image},
                  zip=True)
    assert [(c.params.denoise, c.params.steps) for c in sweep.cells()] == [(0.3, 10), (0.5, 30)]  # type: ignore[attr-defined]


def test_zipped_axes_of_different_lengths_are_refused(img2img: Any) -> None:
    with pytest.raises(SweepError, match="denoise: 2, steps: 3"):
        Sweep(img2img, (parse_axis("denoise=0.3,0.5"), parse_axis("steps=10,20,30")), zip=True)


def test_samplers_by_friendly_names_reach_comfyui_names(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis('sampler="dpm++ 2m karras",euler a'),), {"image": sample_image})
    cells = sweep.cells()
    assert cells[0].values["sampler"] == "dpm++ 2m karras"  # the label stays as typed
    assert (cells[0].params.sampler, cells[0].params.scheduler) == ("dpmpp_2m", "karras")  # type: ignore[attr-defined]
    assert cells[1].params.sampler == "euler_ancestral"  # type: ignore[attr-defined]


def test_search_and_replace_rewrites_the_prompt(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("positive=sr:cat,dog,red fox"),),
                  {"image": sample_image, "positive": "a cat on a mat, cat hair"})
    prompts = [c.params.positive for c in sweep.cells()]  # type: ignore[attr-defined]
    assert prompts == ["a cat on a mat, cat hair", "a dog on a mat, dog hair", "a red fox on a mat, red fox hair"]


def test_search_and_replace_of_a_word_not_in_the_prompt_is_refused(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("positive=sr:cat,dog"),), {"image": sample_image, "positive": "a bird"})
    with pytest.raises(SweepError, match="axis 'positive': 'cat' does not occur in the prompt 'a bird'"):
        sweep.cells()


def test_a_value_out_of_range_names_its_axis(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("cfg=7,8"), parse_axis("denoise=0.5:1.5:0.5")), {"image": sample_image})
    with pytest.raises(ParameterError, match=r"^axis denoise=1.5: img2img: denoise=1.5") as caught:
        sweep.cells()
    assert caught.value.parameter == "denoise"


def test_an_unknown_parameter_names_its_axis(img2img: Any, sample_image: Path) -> None:
    with pytest.raises(ParameterError, match="axis cfgg=7: img2img has no parameter 'cfgg'; did you mean 'cfg'"):
        Sweep(img2img, (parse_axis("cfgg=7,8"),), {"image": sample_image}).cells()


@pytest.mark.parametrize(("axes", "fixed", "message"), [
    ((), {}, "at least one axis"),
    ((Axis("cfg", (1,)), Axis("cfg", (2,))), {}, "more than once"),
    ((Axis("cfg", (1, 2)),), {"cfg": 7}, "also set as a fixed parameter"),
])
def test_malformed_sweeps_are_refused(img2img: Any, axes: tuple[Axis, ...], fixed: dict[str, Any],
                                      message: str) -> None:
    with pytest.raises(SweepError, match=message):
        Sweep(img2img, axes, fixed)


def test_a_sweeps_fixed_values_cannot_change_once_it_is_made(img2img: Any, sample_image: Path) -> None:
    given: dict[str, Any] = {"image": str(sample_image), "cfg": 7}
    made = Sweep(img2img, (parse_axis("denoise=0.3,0.6"),), given)
    rebuilt = Sweep.from_definition(img2img, made.definition())
    for sweep in (made, rebuilt):
        with pytest.raises(TypeError):
            sweep.fixed["cfg"] = 9  # type: ignore[index]
        with pytest.raises(TypeError):
            del sweep.fixed["cfg"]  # type: ignore[attr-defined]
    digest = made.digest()
    given["cfg"] = 9  # the caller's dict stays the caller's
    assert made.fixed["cfg"] == 7 and made.digest() == digest
    assert [cell.params.cfg for cell in made.cells()] == [7, 7]  # type: ignore[attr-defined]


def test_a_sweep_validates_its_cells_once(img2img: Any, sample_image: Path) -> None:
    counting = CountingTemplate(img2img)
    sweep = Sweep(counting, (parse_axis("denoise=0.3:0.9:0.3"), parse_axis("cfg=6,8")), {"image": str(sample_image)})
    first = sweep.cells()
    assert counting.validated == 6
    again, definition, digest = sweep.cells(), sweep.definition(), sweep.digest()
    assert counting.validated == 6  # the cells, the stored definition's picture and the digest come from the first
    assert [c.params for c in again] == [c.params for c in first] and again is not first
    assert definition["fixed"]["image"]["file"] == sample_image.name and digest == sweep.digest()
    stored = sweep.with_stored_axes(definition)  # another sweep: its own cells
    assert len(stored.cells()) == 6 and counting.validated == 12


def test_a_sweep_with_a_bad_cell_says_so_each_time_it_is_asked(img2img: Any, sample_image: Path) -> None:
    counting = CountingTemplate(img2img)
    sweep = Sweep(counting, (parse_axis("denoise=0.5,1.5"),), {"image": str(sample_image)})
    for _ in range(2):
        with pytest.raises(ParameterError, match="axis denoise=1.5"):
            sweep.cells()
    assert counting.validated == 4  # nothing is kept of a sweep that failed


def test_definition_round_trips_with_drawn_seeds(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("seed=random:3", rng=random.Random(1)), parse_axis("cfg=6,8")),
                  {"image": str(sample_image)})
    again = Sweep(img2img, (parse_axis("seed=random:3"), parse_axis("cfg=6,8")),
                  {"image": str(sample_image)}).with_stored_axes(sweep.definition())
    assert again.axes == sweep.axes
    assert [c.params for c in again.cells()] == [c.params for c in sweep.cells()]


def test_definition_names_input_files_by_content_not_path(img2img: Any, sample_image: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def sweep(image: str) -> Sweep:
        return Sweep(img2img, (parse_axis("cfg=6,8"),), {"image": image})

    absolute = sweep(str(sample_image))
    monkeypatch.chdir(sample_image.parent)
    relative = sweep(sample_image.name)
    fixed = absolute.definition()["fixed"]["image"]
    assert fixed["file"] == sample_image.name and fixed["content"].startswith(sample_image.stem + "-")
    assert str(tmp_path) not in json.dumps(absolute.definition())
    before = absolute.digest()
    assert relative.digest() == before  # the same file, typed from another folder: the same sweep
    Image.new("RGB", (8, 8), (1, 2, 3)).save(sample_image)
    assert sweep(str(sample_image)).digest() != before  # other pixels under the same name: not


def test_digest_ignores_drawn_seeds_but_not_other_values(img2img: Any) -> None:
    def digest(seed_text: str, cfg: str) -> str:
        return Sweep(img2img, (parse_axis(seed_text, rng=random.Random()), parse_axis(cfg))).digest()

    assert digest("seed=random:3", "cfg=6,8") == digest("seed=random:3", "cfg=6,8")
    assert digest("seed=random:3", "cfg=6,8") != digest("seed=random:4", "cfg=6,8")
    assert digest("seed=random:3", "cfg=6,8") != digest("seed=random:3", "cfg=6,9")


def test_batched_seeds_become_one_prompt_per_other_values(library: Templates, sample_image: Path) -> None:
    variations = library.get("variations")
    seeds = parse_axis("seed=random:4", rng=random.Random(3))
    sweep = Sweep(variations, (parse_axis("cfg=6,8"), seeds, parse_axis("denoise=0.4,0.6")),
                  {"image": sample_image}, batch_seeds=True)
    cells = sweep.cells()
    batches = sweep.batches(cells)
    assert len(cells) == 16 and len(batches) == 4
    for batch in batches:
        assert [c.batch_index for c in batch.cells] == [0, 1, 2, 3]
        assert batch.params.batch_size == 4 and batch.params.seed == seeds.values[0]  # type: ignore[attr-defined]
        # cells differing in cfg or denoise never share a prompt
        assert len({(c.values["cfg"], c.values["denoise"]) for c in batch.cells}) == 1
    assert all(BATCH_AXIS in c.values and "seed" not in c.values for c in cells)


def test_batching_needs_a_template_with_a_batch_size(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("seed=1,2"),), {"image": sample_image}, batch_seeds=True)
    with pytest.raises(SweepError, match="cannot batch seeds: it has no batch_size"):
        sweep.batches()


def test_batching_needs_a_seed_axis(img2img: Any) -> None:
    with pytest.raises(SweepError, match="axis named 'seed'"):
        Sweep(img2img, (parse_axis("cfg=1,2"),), batch_seeds=True)


def _graph(checkpoint: str, prompt: str, cfg: float) -> Graph:
    return Graph.from_api({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "cfg": cfg}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    })


def test_cache_key_ignores_what_comes_after_sampling() -> None:
    assert cache_key(_graph("a", "cat", 6)) == cache_key(_graph("a", "cat", 9))
    assert cache_key(_graph("a", "cat", 6))[0] == cache_key(_graph("a", "dog", 6))[0]
    assert cache_key(_graph("a", "cat", 6))[1] != cache_key(_graph("a", "dog", 6))[1]
    assert cache_key(_graph("a", "cat", 6))[0] != cache_key(_graph("b", "cat", 6))[0]


def test_order_for_cache_runs_shared_checkpoints_and_prompts_back_to_back() -> None:
    items = [("a", "cat", 1), ("b", "cat", 2), ("a", "dog", 3), ("a", "cat", 4), ("b", "cat", 5), ("a", "dog", 6)]
    asked: list[int] = []

    def key(item: tuple[str, str, int]) -> tuple[str, str]:
        asked.append(item[2])
        return cache_key(_graph(item[0], item[1], item[2]))

    ordered = order_for_cache(items, key)
    assert [i[2] for i in ordered] == [1, 4, 3, 6, 2, 5]
    assert sorted(asked) == [1, 2, 3, 4, 5, 6]  # each graph is hashed once


def test_real_template_cells_share_a_cache_key_across_cfg(img2img: Any, sample_image: Path) -> None:
    sweep = Sweep(img2img, (parse_axis("cfg=6,8"), parse_axis("positive=a,b")), {"image": sample_image})
    keys = [cache_key(img2img.job(c.params).graph) for c in sweep.cells()]
    assert keys[0] == keys[2] and keys[1] == keys[3] and keys[0] != keys[1]


@pytest.mark.parametrize(("text", "values"), [
    ("seed=1-4", (1, 2, 3, 4)),  # A1111's range of whole numbers
    ("steps=30-27", (30, 29, 28, 27)),
    ("seed=-5--3", (-5, -4, -3)),
    ("seed=7", (7,)),
])
def test_a1111_integer_ranges(text: str, values: tuple[int, ...]) -> None:
    assert parse_axis(text).values == values


def test_a_seed_of_minus_one_is_drawn_and_kept(img2img: Any) -> None:
    axis = parse_axis("seed=-1,-1,42", rng=random.Random(3))
    assert axis.values[2] == 42 and all(isinstance(v, int) and v >= 0 for v in axis.values)
    assert len(set(axis.values)) == 3
    assert parse_axis("cfg=-1").values == (-1,)  # only a seed means "draw one"

    def digest() -> str:
        return Sweep(img2img, (parse_axis("seed=-1", rng=random.Random()), parse_axis("cfg=6,8"))).digest()

    assert digest() == digest()  # the same command again is the same sweep, whatever was drawn

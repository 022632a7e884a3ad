"""Searches on data that is not built in, written at test time from real images: a folder of
CIFAR-10 PNGs through `nas search` on Ray (streamed from disk by loader processes inside the
worker actors), through the search service, and through the Python API; arrays and a text corpus
likewise; and every worker checking that it reads the files the driver planned with."""

from __future__ import annotations

import json

import datafiles
import pytest

import raynas
from raynas.common import DataError
from raynas.controller.cli import main
from raynas.controller.runtime.plan import resolve
from raynas.controller.runtime.spec import SearchSpec
from raynas.controller.service.manager import RayLauncher, SearchManager

pytestmark = pytest.mark.usefixtures("ray_cluster")

TINY = ["--space", "nb201", "--strategy", "random", "--evaluations", "4", "--workers", "2", "--cpus-per-child", "0.5",
        "--epochs", "1", "--channels", "4", "--layers", "1"]


def records(out):
    return [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]


def test_nas_search_on_an_image_folder_streamed_from_disk(tmp_path):
    root = datafiles.image_folder(tmp_path / "pets", 160, 40)
    out = tmp_path / "run"
    assert main(["search", *TINY, "--dataset", "image-folder", "--data", str(root), "--dataset-option", "stream=disk",
                 "--dataset-option", "loader_workers=1", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["state"] == "done" and result["failed"] == 0 and result["dataset"] == "image-folder"
    assert result["runtime"] == "ray" and result["scheme"]["workers"] == 2
    for record in records(out):
        assert record["status"] == "ok" and 0 <= record["metrics"]["val_acc_best"] <= 1
        assert record["metrics"]["images_per_s"] > 0
    table = raynas.results(out)
    assert [r["id"] for r in table] == [r["id"] for r in records(out)] and "val_acc_best" in table[0]


def test_the_python_api_searches_arrays_and_a_text_corpus(tmp_path):
    arrays = datafiles.arrays_npy(tmp_path / "npy", 120, 30)
    result = raynas.search(space="nb201", strategy="evolution", dataset="arrays", data_path=str(arrays),
                           dataset_options={"stream": "disk"}, evaluations=4, workers=2, cpus_per_child=0.5,
                           evaluator_options={"epochs": 1, "channels": 4, "layers": 1}, out=tmp_path / "arrays")
    assert result.state == "done" and result.summary["dataset"] == "arrays" and result.summary["failed"] == 0
    assert len(result.rows()) == 4 and result.best["reward"] is not None
    corpus = datafiles.text_folder(tmp_path / "corpus")
    text = raynas.search(space="rnn", strategy="random", dataset="text-folder", data_path=str(corpus), evaluations=2,
                         workers=2, cpus_per_child=0.5, out=tmp_path / "text",
                         evaluator_options={"epochs": 1, "channels": 8, "batch_size": 8, "bptt": 10,
                                            "max_train_batches_per_epoch": 4})
    assert text.state == "done" and text.summary["failed"] == 0
    assert all("val_ppl_best" in r for r in text.rows())


def test_the_service_runs_a_search_on_an_image_folder_inside_its_data_root(tmp_path):
    root = tmp_path / "data"
    datafiles.image_folder(root / "pets", 80, 20)
    manager = SearchManager(tmp_path / "state", RayLauncher(), poll_s=0.1, data_roots=[str(root)])
    try:
        spec = {"space": "nb201", "strategy": "random", "dataset": "image-folder", "data_path": "pets",
                "evaluations": 2, "workers": 1, "cpus_per_child": 0.5,
                "evaluator_options": {"epochs": 1, "channels": 4, "layers": 1}}
        record = manager.submit(spec)
        assert record.spec["data_path"] == str((root / "pets").resolve())
        events = list(manager.watch(record.id))
    finally:
        manager.close()
    assert events[-1] == {"kind": "state", "state": "succeeded", "error": ""}
    assert sum(e["kind"] == "evaluation" for e in events) == 2


def test_a_node_that_sees_other_files_refuses_to_train(tmp_path):
    root = datafiles.image_folder(tmp_path / "pets", 40, 10)
    plan = resolve(SearchSpec(space="nb201", strategy="random", dataset="image-folder", data_path=str(root),
                              evaluator_options={"epochs": 1, "channels": 4, "layers": 1})).fingerprinted()
    assert plan.fingerprint is not None
    (root / "train" / "cat" / "train_00003.png").unlink()  # this "node" lost a file
    with pytest.raises(DataError, match="sees other files at .*pets.*shared file system"):
        plan.make_evaluator()

"""Every invariant of NSD's official layout the loader checks: a miniature broken in exactly one
way fails with one line naming the file and the invariant (and `data check` names it the same
way where it reads that file); a missing design file stops `brainharness run` with exit 2."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.io import loadmat, savemat

from conftest import tiny_config
from brainharness.datasets.datacheck import check_path
from brainharness.datasets.nsd import NSD
from brainharness.errors import DataError
from brainharness.runner import Runner
from nsd_layouts import build_nsd, nsd_paths, write_session, write_volume

DESIGN = "nsd_expdesign.mat"


def _edit_design(m, **edits):
    path = nsd_paths(m.root, 1)["design"] / DESIGN
    d = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
    for key, edit in edits.items():
        if edit is None:
            d.pop(key)
        else:
            d[key] = edit(d[key].copy())
    savemat(path, d)


def _set(a, index, value):
    a[index] = value
    return a


def _repeat_twice(order):
    first = np.flatnonzero(order[0] == 5)[0]
    order[0, first] = 6  # index 5 now shown twice, index 6 four times
    return order


def _edit_table(m, edit):
    path = nsd_paths(m.root, 1)["design"] / "nsd_stim_info_merged.csv"
    table = pd.read_csv(path, index_col=0)
    out = edit(table)  # edits in place, or returns the new table
    (out if isinstance(out, pd.DataFrame) else table).to_csv(path)


def _swap_trials(t):
    shown = np.flatnonzero(t["subject1_rep0"].to_numpy() > 0)[:2]
    t.loc[shown, "subject1_rep0"] = t.loc[shown[::-1], "subject1_rep0"].to_numpy()


def _write_h5(path, key, data):
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data)


def _rewrite_brick(m, images, key="imgBrick"):
    _write_h5(nsd_paths(m.root, 1)["stimuli"] / "nsd_stimuli.hdf5", key, images)


def _cases(m):
    """name → (edit, needles, loader params, named the same way by `data check`)."""
    p, truth = nsd_paths(m.root, 1), m.subjects[1]
    betas = truth.betas
    return {
        # the design file's own invariants
        "masterordering_range": (lambda: _edit_design(m, masterordering=lambda a: _set(a, (0, 4), 0)),
                                 ["masterordering holds 0, outside 1..120"], {}, True),
        "subjectim_range": (lambda: _edit_design(m, subjectim=lambda a: _set(a, (0, 50), 73001)),
                            ["subjectim holds 73001, outside 1..73000 (1-based 73k ids)"], {}, True),
        "subjectim_subjects": (lambda: _edit_design(m, subjectim=lambda a: a[:7]),
                               ["subjectim has shape (7, 120), expected (8 subjects, images)"], {}, True),
        "fractional_indices": (lambda: _edit_design(m, masterordering=lambda a: _set(a, (0, 0), 1.5)),
                               ["masterordering must hold whole-number indices"], {}, True),
        "three_repeats": (lambda: _edit_design(m, masterordering=_repeat_twice),
                          ["masterordering shows image index 5 2 times", "3 times"], {}, True),
        "stimpattern_total": (lambda: _edit_design(m, stimpattern=lambda a: _set(a, (0, 0, 1), 0)),
                              ["stimpattern gives 359 trials, masterordering lists 360"], {}, True),
        "sharedix": (lambda: _edit_design(m, sharedix=lambda a: _set(a, (0, 0), 399)),
                     ["first 20 images of subjectim row 1 are not the sharedix images"], {}, True),
        "design_variable": (lambda: _edit_design(m, subjectim=None), ["no variable 'subjectim'"], {}, True),
        "design_unreadable": (lambda: (p["design"] / DESIGN).write_bytes(b"MATLAB 5.0 junk"),
                              ["nsd_expdesign.mat: unreadable MATLAB file"], {}, True),
        "stimpattern_values": (lambda: _edit_design(m, stimpattern=lambda a: _set(a, (0, 0, 1), 2)),
                               ["stimpattern should be sessions × runs × slots of 0/1"], {}, True),
        "no_stimpattern": (lambda: _edit_design(m, stimpattern=None),
                           ["750 per session (no stimpattern) gives 0 trials, masterordering lists 360"], {}, True),
        # the betas against the design, nsdgeneral and NSD's format
        "session_trials": (lambda: write_session(p["betas"], 2, betas[1][..., :-1], "hdf5"),
                           ["betas_session02.hdf5: 59 trials, but session 2 of nsd_expdesign.mat has 60"], {}, True),
        "session_beyond_design": (lambda: [write_session(p["betas"], n, betas[0], "hdf5") for n in (4, 5, 6, 7)],
                                  ["betas_session07.hdf5: session 7, but subj01 has 6 sessions"], {}, True),
        "betas_dtype": (lambda: write_session(p["betas"], 1, betas[0].astype(np.int32), "hdf5"),
                        ["betas_session01.hdf5: betas of type int32; NSD stores int16"], {}, True),
        "betas_hdf5_3d": (lambda: _write_h5(p["betas"] / "betas_session02.hdf5", "betas", betas[1][..., 0].T),
                          ["betas_session02.hdf5: 'betas' should be (trials, Z, Y, X), got shape"], {}, True),
        "betas_nifti_3d": (lambda: (write_volume(p["betas"] / "betas_session01.nii.gz", betas[0][..., 0]),
                                    (p["betas"] / "betas_session01.hdf5").unlink()),
                           ["betas_session01.nii.gz", "expected a 4-D (X, Y, Z, trials) volume"], {}, True),
        # ROI volumes
        "roi_unknown_label": (lambda: write_volume(p["roi"] / "prf-visualrois.nii.gz",
                                                   _set(truth.roi_volumes["prf-visualrois"].copy(), (0, 0, 0), 9)),
                              ["prf-visualrois.nii.gz: label 9 has no name in prf-visualrois.mgz.ctab"], {}, False),
        "roi_fraction": (lambda: write_volume(p["roi"] / "floc-faces.nii.gz",
                                              _set(truth.roi_volumes["floc-faces"].astype(np.float32), (0, 0, 0), 1.5)),
                         ["floc-faces.nii.gz: ROI labels must be whole numbers, found 1.5"], {}, False),
        "nsdgeneral_missing": (lambda: (p["roi"] / "nsdgeneral.nii.gz").unlink(),
                               ["nsdgeneral.nii.gz: not found (the nsdgeneral mask: which voxels are read)"], {}, False),
        "nsdgeneral_empty": (lambda: write_volume(p["roi"] / "nsdgeneral.nii.gz", np.zeros(truth.mask.shape, np.int16)),
                             ["nsdgeneral.nii.gz: no voxel > 0"], {}, False),
        "nsdgeneral_fraction": (lambda: write_volume(p["roi"] / "nsdgeneral.nii.gz", truth.mask * np.float32(0.5)),
                                ["nsdgeneral.nii.gz: ROI labels must be whole numbers, found 0.5"], {}, False),
        # the image brick
        "imgbrick_dtype": (lambda: _rewrite_brick(m, m.images.astype(np.float32)),
                           ["nsd_stimuli.hdf5: imgBrick should be (images, H, W, 3) uint8"], {}, True),
        "imgbrick_key": (lambda: _rewrite_brick(m, m.images, key="images"),
                         ["nsd_stimuli.hdf5: no readable 'imgBrick' dataset"], {}, True),
        "imgbrick_short": (lambda: _rewrite_brick(m, m.images[:10]),
                           ["nsd_stimuli.hdf5: imgBrick has 10 images, the design refers to id"], {}, False),
        # the stimulus table and COCO files (read when captions are needed: here required)
        "table_columns": (lambda: _edit_table(m, lambda t: t.pop("cocoId")),
                          ["nsd_stim_info_merged.csv: no column 'cocoId'"], {"captions": "required"}, False),
        "table_repeats": (lambda: _edit_table(m, lambda t: t.__setitem__("nsdId", np.r_[0, t["nsdId"][:-1]])),
                          ["nsd_stim_info_merged.csv: nsdId values repeat"], {"captions": "required"}, False),
        "table_range": (lambda: _edit_table(m, lambda t: t.__setitem__("nsdId", t["nsdId"] + 72700)),
                        ["nsd_stim_info_merged.csv: nsdId must be 0-based 73k ids"], {"captions": "required"}, False),
        "table_rows": (lambda: _edit_table(m, lambda t: t.drop(index=m.subjects[1].trial_ids[0])),
                       ["nsd_stim_info_merged.csv: no row for nsdId"], {"captions": "required"}, False),
        "table_trial_range": (lambda: _edit_table(m, lambda t: t.__setitem__("subject1_rep0", t["subject1_rep0"] * 10)),
                              ["subject1_rep0 holds trial", "nsd_expdesign.mat has 360"], {"captions": "required"},
                              False),
        "table_split": (lambda: _edit_table(m, lambda t: t.__setitem__("cocoSplit", "test2015")),
                        ["cocoSplit 'test2015' is not one of train2017, val2017"], {"captions": "required"}, False),
        "table_trials": (lambda: _edit_table(m, _swap_trials),
                         ["nsd_stim_info_merged.csv: subject1_rep0 says trial", "nsd_expdesign.mat says"],
                         {"captions": "required"}, False),
        "coco_json": (lambda: (p["stimuli"] / "annotations/captions_val2017.json").write_text('{"images": []}'),
                      ["captions_val2017.json: unreadable COCO captions (KeyError"], {"captions": "required"}, False),
    }


CASES = ["masterordering_range", "subjectim_range", "subjectim_subjects", "fractional_indices", "three_repeats",
         "stimpattern_total", "sharedix", "design_variable", "design_unreadable", "stimpattern_values",
         "no_stimpattern", "session_trials", "session_beyond_design", "betas_dtype", "betas_hdf5_3d",
         "betas_nifti_3d", "roi_unknown_label", "roi_fraction", "nsdgeneral_missing", "nsdgeneral_empty",
         "nsdgeneral_fraction", "imgbrick_dtype", "imgbrick_key", "imgbrick_short", "table_columns", "table_repeats",
         "table_range", "table_rows", "table_trial_range", "table_split", "table_trials", "coco_json"]


@pytest.mark.parametrize("case", CASES)
def test_each_broken_invariant_fails_in_one_line_naming_the_file(tmp_path, case):
    m = build_nsd(tmp_path / "nsd", n_sessions=3)
    cases = _cases(m)
    assert list(cases) == CASES  # every case is run
    edit, needles, params, by_data_check = cases[case]
    edit()
    with pytest.raises(DataError) as e:
        NSD(root=m.root, cache=False, **params).load()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    if by_data_check:
        assert msg in check_path(m.root)["layouts"][0]["problems"]


def test_a_subject_has_no_more_sessions_than_it_completed(tmp_path):
    m = build_nsd(tmp_path / "nsd", subjects=(4,), n_sessions=31, design_sessions=32, trials_per_session=3,
                  n_images=200, n_shared=8)
    with pytest.raises(DataError) as e:
        NSD(root=m.root, subject=4, cache=False).load()
    assert str(e.value).endswith("betas_session31.hdf5: session 31, but subj04 has 30 sessions "
                                 "(completed in NSD: 30; in nsd_expdesign.mat: 32)")
    ds = NSD(root=m.root, subject=4, sessions=30, cache=False).load()
    assert ds.info["subjects"]["subj04"]["trials"] == 90


def test_a_broken_stimulus_table_does_not_fail_a_run_that_needs_no_captions(tmp_path):
    m = build_nsd(tmp_path / "nsd", n_sessions=4)
    _edit_table(m, lambda t: t.pop("cocoId"))
    cfg = tiny_config(tmp_path, dataset={"name": "nsd", "root": str(m.root)},
                      backbones=[{"name": "pixels", "size": 8}], tasks=[{"name": "encoding", "nc_threshold": 5}])
    runner = Runner(cfg, progress=False)
    (rec,) = runner.run()
    assert rec["status"] == "complete" and rec["scores"]["median_nc_r2"] > 20
    assert runner.dataset.info["captions"]["status"] == "read on first use"  # never opened
    with pytest.raises(DataError, match="nsd_stim_info_merged.csv: no column 'cocoId'"):
        runner.dataset.stimuli.captions.get(0)  # a task that needs them gets the one line


def test_run_names_a_missing_design_file_in_one_line_before_any_work(tmp_path):
    m = build_nsd(tmp_path / "data/nsd", n_sessions=3)
    design = nsd_paths(m.root, 1)["design"] / DESIGN
    design.unlink()
    work = tmp_path / "work"
    work.mkdir()
    cfg = {"experiment": "x", "results_dir": str(work / "results"), "cache_dir": str(work / "cache"),
           "dataset": {"name": "nsd", "root": str(m.root)}, "backbones": [{"name": "pixels", "size": 8}],
           "tasks": [{"name": "encoding"}], "tracking": {"wandb": {"mode": "disabled"}}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "BRAINHARNESS_CACHE": str(work / "env-cache"), "WANDB_DIR": str(work / "wandb")}
    proc = subprocess.run([sys.executable, "-m", "brainharness.cli", "-q", "run", "config.yaml"], capture_output=True,
                          text=True, env=env, cwd=work, timeout=120)
    line = f"{design}: not found (needed to map trials to images)"
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"brainharness: error: {line}"], proc.stderr
    assert sorted(p.name for p in work.iterdir()) == ["config.yaml"]  # nothing computed or written
    assert line in check_path(m.root)["layouts"][0]["problems"]  # `data check` names it the same way


def test_data_check_names_a_session_with_the_wrong_trial_count(tmp_path):
    m = build_nsd(tmp_path / "nsd", n_sessions=3)
    write_session(nsd_paths(m.root, 1)["betas"], 3, m.subjects[1].betas[2][..., :50], "hdf5")
    report = check_path(m.root)["layouts"][0]
    assert report["problems"] == [f"{nsd_paths(m.root, 1)['betas'] / 'betas_session03.hdf5'}: 50 trials, but session 3 "
                                  "of nsd_expdesign.mat has 60 (trials are paired with images by position)"]
    assert json.dumps(report)  # the report stays JSON-able


def test_a_design_without_stimpattern_has_nsds_750_trials_per_session(tmp_path):
    m = build_nsd(tmp_path / "nsd", n_sessions=1, design_sessions=2, trials_per_session=750, n_images=600,
                  n_shared=60)
    _edit_design(m, stimpattern=None)
    ds = NSD(root=m.root, cache=False).load()
    assert ds.info["subjects"]["subj01"]["trials"] == 750
    write_session(nsd_paths(m.root, 1)["betas"], 1, m.subjects[1].betas[0][..., :749], "hdf5")
    with pytest.raises(DataError, match="betas_session01.hdf5: 749 trials, but session 1 of nsd_expdesign.mat has 750"):
        NSD(root=m.root, cache=False).load()

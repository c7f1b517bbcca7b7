"""`brainharness data check PATH`: layout detection, sizes and problems, from headers only."""
import numpy as np

from brainharness.datasets.datacheck import check_path, format_report
from nsd_layouts import BETA, build_algonauts, build_brain_diffuser, build_nsd, nsd_paths, write_session


def test_brain_diffuser_data_folder_holds_two_layouts(tmp_path):
    nsd = build_nsd(tmp_path / "data", subjects=(1, 2), formats=("hdf5", "nifti"))
    build_brain_diffuser(nsd)
    result = check_path(tmp_path / "data")
    assert result["ok"], format_report(result)
    official, bd = result["layouts"]
    assert official["layout"] == "nsd" and bd["layout"] == "nsd-brain-diffuser"
    assert official["images"] == {"n": 400, "shape": [24, 24, 3]}
    assert official["design"] == {"trials": 360, "sessions": 6, "subjects": 8, "images_per_subject": 120, "shared": 20}
    s1 = official["subjects"]["subj01"]
    assert s1["betas"][BETA] == {"sessions": 4, "formats": ["hdf5", "nifti"], "trials": 240}
    assert s1["voxels"] == nsd.subjects[1].mask.sum() and s1["volume"] == [6, 7, 5]
    assert any("4 of NSD's 40 sessions" in n for n in official["notes"])
    assert bd["subjects"]["subj01"]["train"] == {"images": 96, "voxels": int(nsd.subjects[1].mask.sum())}
    text = format_report(result)
    assert "layout: nsd (NSD official layout)" in text and "4/40 sessions of betas_fithrf_GLMdenoise_RR" in text
    assert "design: 360 trials in 6 sessions, 8 subjects × 120 images, 20 shared" in text
    assert "layout: nsd-brain-diffuser" in text and text.rstrip().endswith("OK")


def test_problems_name_the_file(tmp_path):
    nsd = build_nsd(tmp_path, n_sessions=4)
    p = nsd_paths(tmp_path, 1)
    (p["betas"] / "betas_session02.hdf5").unlink()
    write_session(p["betas"], 3, nsd.subjects[1].betas[2][:-1], "hdf5")
    (p["stimuli"] / "nsd_stimuli.hdf5").unlink()
    (p["stimuli"] / "annotations/captions_val2017.json").unlink()
    result = check_path(tmp_path)
    problems = result["layouts"][0]["problems"]
    assert not result["ok"] and len(problems) == 3
    assert "betas_session02.(hdf5|nii.gz): missing session" in problems[1]
    assert "betas_session03.hdf5: volume (5, 7, 5) does not match nsdgeneral (6, 7, 5)" in problems[2]
    assert problems[0].endswith("nsd_stimuli.hdf5: not found (the NSD images)")
    assert any("captions_val2017.json: not found" in n for n in result["layouts"][0]["notes"])
    assert format_report(result).rstrip().endswith("3 problems")


def test_algonauts_and_unknown_folders(tmp_path):
    build_algonauts(tmp_path / "alg", n_images=30)
    np.save(tmp_path / "alg/subj01/roi_masks/lh.floc-faces_challenge_space.npy", np.zeros(3))
    result = check_path(tmp_path / "alg")
    (report,) = result["layouts"]
    assert report["layout"] == "algonauts2023" and report["subjects"]["subj01"]["images"] == 30
    assert report["subjects"]["subj01"]["vertices"] == {"lh": 40, "rh": 30}
    assert report["problems"] == [f"{tmp_path / 'alg/subj01/roi_masks/lh.floc-faces_challenge_space.npy'}: "
                                  "not 40 labels (the lh vertices)"]
    empty = check_path(tmp_path / "elsewhere")
    assert not empty["ok"] and "not a folder" in empty["problems"][0]
    (tmp_path / "empty").mkdir()
    assert "no known layout" in format_report(check_path(tmp_path / "empty"))


def test_cli_data_check_reports_layout(tmp_path, capsys):
    from brainharness.cli import main

    assert main(["data", "check", str(tmp_path)]) == 2  # an empty folder has no known layout: a data error
    out = capsys.readouterr().out
    assert "no known layout" in out and "1 problem" in out

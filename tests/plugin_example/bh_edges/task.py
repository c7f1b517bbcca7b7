"""A new task in one file, with its leaderboard layout: representational similarity analysis.

Per ROI, the Spearman correlation between the model's and the brain's representational
dissimilarity matrices (1 − Pearson r between the scored images' patterns).
"""
import numpy as np
from scipy.stats import spearmanr

from brainharness import Param, Task, TaskOutput
from brainharness.capabilities import IMAGE_FEATURES, ROI_MASKS
from brainharness.layout import Layout, Plot, RoiColumns, Table


def rdm(patterns: np.ndarray) -> np.ndarray:
    """Upper triangle of 1 − corr between rows (images)."""
    c = np.corrcoef(patterns.reshape(len(patterns), -1))
    return 1 - c[np.triu_indices(len(c), 1)]


class RSATask(Task):
    direction = "image→brain"
    needs = (IMAGE_FEATURES, ROI_MASKS)
    main_score = "rsa_all"
    params = {"layer": Param(None, str, doc="backbone layer (null: the backbone's own)"),
              "max_images": Param(200, int, ge=3, doc="scored images used for the RDMs (the first ones)")}
    layout = Layout(Table(name="rsa", title="RSA: Spearman ρ of model and brain RDMs",
                          description="cells: per-ROI Spearman ρ between RDMs over the scored images",
                          columns=RoiColumns(rois=("V1", "V2", "V3", "hV4", "FFA", "PPA"),
                                             score="rsa_all", value="rsa",
                                             cell_kind="acc"),
                          plots=(Plot("bars"),)))
    example = {"backbone": {"name": "pixels", "size": 8}}  # for the shared task conformance suite

    def run(self, ctx) -> TaskOutput:
        ids = ctx.score.stim_ids[: self.p["max_images"]]
        model = rdm(ctx.features(ids, self.p["layer"]))
        brain = ctx.score.averaged[: len(ids)]
        rows = [{"roi": name, "n_voxels": int(mask.sum()), "rsa": float(spearmanr(model, rdm(brain[:, mask]))[0])}
                for name, mask in ctx.rois.items() if mask.sum() > 1]
        scores = {"rsa_all": float(spearmanr(model, rdm(brain))[0]), "n_images": len(ids)}
        return TaskOutput(self.main_score, scores, {"per_roi": rows})

"""What a reader must know before believing a number: failed jobs, mixed code, FIDs on different bases,
losses on different scales, and what the "heun" sampler really is.

Each check reads ``AblationData`` (or one of its tables) and returns a sentence, or None when there is
nothing to say; the opening paragraph and the sections place them.
"""

from __future__ import annotations

import pandas as pd

from harness.config import DiffusionConfig
from harness.config.schema import MIXED_CODE
from harness.diffusion.samplers import HEUN_SIGMA_MAX

from .arm_labels import arm_label
from .load import AblationData
from .words import and_list, num

# Every field of the diffusion section changes what the loss measures at a given t (the schedule and
# T rescale the noise levels, the parameterization the target, the weighting and its gamma the weights),
# so only arms that agree on all of them share a loss scale.
# The data space changes the target itself (pixels or an autoencoder's latents), so it is part of the objective.
OBJECTIVE_KEYS = (*(f"diffusion.{k}" for k in DiffusionConfig.model_fields), "data.space")
# What makes two FIDs comparable: the same number of generated samples, the same reference set and the
# same feature extractor: the domain classifier, named by its fingerprint (harness.feature_fingerprint),
# which differs between data sets and between machines that trained their own instead of sharing one.
FID_BASIS = ("num_generated", "num_reference", "dataset", "feature_fingerprint")


# -- failures ---------------------------------------------------------------------------------------


def failed_arms(data: AblationData) -> dict[str, str]:
    """Arms of the plan with no finished training run at all -> why (the failure of their first seed)."""
    done = set(data.runs["arm_label"])
    out: dict[str, str] = {}
    for job in data.missing:
        label = arm_label(job["arm"])
        if label not in done:
            out.setdefault(label, job["reason"])
    return out


def missing_evaluations(data: AblationData) -> list[str]:
    """'cosine seed 1 with ddim-10-eta0-w0' for each planned (finished run, setting) with no evaluation."""
    if not data.planned:  # without a plan, a run never asked for a setting evaluated on another one
        return []
    have = set(zip(data.evals["run_id"], data.evals["setting"]))
    wanted = {run.run_id: data.planned_settings.get(run.config_hash, data.settings) for run in data.runs.itertuples()}
    return [
        f"{run.arm_label} seed {run.seed} with {s}"
        for s in data.settings
        for run in data.runs.itertuples()
        if s in wanted[run.run_id] and (run.run_id, s) not in have
    ]


def failure_sentence(data: AblationData) -> str | None:
    """One sentence that opens a report on a plan with failures, naming each failed job with its reason."""
    parts = []
    if data.missing:
        planned = len(data.missing) + len(data.runs)
        parts.append(
            f"{len(data.missing)} of {planned} planned training runs did not finish ("
            + "; ".join(f"{arm_label(j['arm'])} seed {j['seed']}: {j['reason']}" for j in data.missing)
            + ")"
        )
    if lost := missing_evaluations(data):
        parts.append(
            f"{len(lost)} planned evaluation(s) are missing ({'; '.join(lost[:10])}"
            + (f"; and {len(lost) - 10} more" if len(lost) > 10 else "")
            + ")"
        )
    if data.parent_status and data.parent_status not in ("FINISHED", "RUNNING"):
        parts.append(f"the newest harness run of this experiment is {data.parent_status}")
    if not parts:
        return None
    return f"This plan has failures: {'; '.join(parts)}. What follows uses the finished runs only."


# -- provenance -------------------------------------------------------------------------------------


def code_sentence(data: AblationData) -> str | None:
    """Names the code versions (and git commits) a report mixes, and flags arms made by different code.

    A training run carries the version of the training code, an evaluation that of the evaluation code
    (orchestration/provenance.py): each kind is compared within itself, never one kind with the other.
    """
    mixed, flagged, commits = [], False, set()
    for kind, df in (("training", data.runs), ("evaluation", data.evals)):
        rows = df[["arm_label", "seed", "code_version", "commit"]].fillna(
            {"code_version": "unknown", "commit": "unknown"}
        )
        commits |= set(rows["commit"])
        versions = list(dict.fromkeys(rows["code_version"]))
        if len(versions) < 2:
            continue
        who = []
        for v in versions:
            seeds = rows[rows["code_version"] == v].groupby("arm_label", sort=False)["seed"].unique()
            arms = [f"{a} seed{'s' if len(g) > 1 else ''} {', '.join(map(str, sorted(g)))}" for a, g in seeds.items()]
            who.append(f"{v} ({'; '.join(arms)})")
        mixed.append(f"{len(versions)} versions of the {kind} code: {', '.join(who)}")
        per_arm = rows.groupby("arm_label", sort=False)["code_version"].agg(frozenset)
        flagged |= len(set(per_arm)) > 1 or any(len(v) > 1 for v in per_arm)
    if not mixed:
        return None
    text = (
        f"These results mix {' and '.join(mixed)}; git commit{'s' if len(commits) > 1 else ''} "
        f"{', '.join(sorted(commits))}."
    )
    if flagged:
        text += (
            " Comparisons between runs made by different code may show the change of code rather than the "
            "arm: re-run the stale jobs before trusting them."
        )
    return text


def curve_sentence(data: AblationData) -> str | None:
    """Flags training runs whose curves were scored by other evaluation code than their final evaluations.

    A model is reused while the training code is unchanged, and its final evaluations are redone by the current
    evaluation code, but its in-training evaluations cannot be (only the last checkpoint is kept): they keep the
    code of their time (harness.curve_code_version; "unknown" for runs tracked before it was recorded). So does
    a run that evaluated only at its end: its one point, drawn and used for the threshold, is not replaced.
    """
    if data.curves.empty:
        return None
    finals = data.evals.groupby("run_id")["code_version"].agg(lambda v: set(v.dropna()))
    runs = data.runs[data.runs["run_id"].isin(set(data.curves["run_id"])) & data.runs["curve_code"].notna()]
    pairs = zip(runs["run_id"], runs["curve_code"])
    other = runs[[c in ("unknown", MIXED_CODE) or c not in finals.get(r, {c}) for r, c in pairs]]
    if other.empty:
        return None
    who = and_list([f"{a} seed {s}" for a, s in zip(other["arm_label"], other["seed"])])
    codes = sorted(set(other["curve_code"]))
    meaning = {"unknown": "tracked before the harness recorded it", MIXED_CODE: "a resume crossed a change of it"}
    said = "; ".join(f'"{c}": {meaning[c]}' for c in codes if c in meaning)
    return (
        f"The curves during training (and when a metric reaches its threshold) of {len(other)} of {len(runs)} "
        f"training runs ({who}) were scored by evaluation code {and_list(codes)}, not the code of their final "
        f"evaluations{f' ({said})' if said else ''}: read them as that code's numbers; `harness run --force` "
        "retrains and rescores them."
    )


def periodic(data: AblationData) -> bool:
    """Whether some run logged evaluations before its last step (``eval_every`` or ``eval_epochs``)."""
    return bool(len(data.curves)) and data.curves.groupby("run_id")["step"].nunique().max() > 1


# -- comparability ----------------------------------------------------------------------------------


def fid_basis(evals: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per evaluation with a FID: arm_label, setting and the FID_BASIS it was computed on."""
    e = evals[evals["fid"].notna()].merge(runs[["run_id", "dataset"]], on="run_id", how="left")
    floor = e["fid_floor"] if "fid_floor" in e else pd.Series(float("nan"), index=e.index)  # NaN: runs before it
    e = e[["arm_label", "setting", *FID_BASIS]].assign(fid_floor=floor)
    e["feature_fingerprint"] = e["feature_fingerprint"].astype(object).fillna("unlogged")  # runs before the tag
    return e


def fid_bases(evals: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Each distinct FID basis in words: 'N = 500 samples against 5,000 mnist-5k images; the floor, real
    images scored the same way at this N, is 3.9'. FID is biased upwards at small N by an amount that differs
    between models, so the floor (held-out real images, ``fid_floor``) says how much of a FID is that bias."""
    bases = fid_basis(evals, runs)
    mixed = bases["feature_fingerprint"].nunique() > 1
    out = []
    for (generated, reference, dataset, fingerprint), rows in bases.groupby(list(FID_BASIS), dropna=False, sort=False):
        floor = rows["fid_floor"].mean()
        words = f"N = {_count(generated)} samples against {_count(reference)} {dataset} images"
        words += f" in the features of classifier {fingerprint}" if mixed else ""
        words += f"; the floor, real images scored the same way at this N, is {num(floor)}" if pd.notna(floor) else ""
        out.append(words)
    return out


def fid_refusal(evals: pd.DataFrame, runs: pd.DataFrame) -> str | None:
    """A sentence refusing to rank FIDs of ``evals`` computed on different bases (None: one basis)."""
    basis = fid_basis(evals, runs).fillna({"num_generated": -1, "num_reference": -1})
    groups = basis.groupby(list(FID_BASIS), sort=False)
    if groups.ngroups < 2:
        return None
    mixed = basis["feature_fingerprint"].nunique() > 1
    parts = [
        f"N = {_count(g)} samples against {_count(r)} {d} images"
        + (f" in the features of classifier {f}" if mixed else "")
        + " for "
        + and_list(list(dict.fromkeys(rows["arm_label"] + " " + rows["setting"])))
        for (g, r, d, f), rows in groups
    ]
    return (
        "FIDs are not ranked: they were computed on different bases (" + "; ".join(parts) + "), and FID depends "
        "on the number of samples, on the reference set and on the feature extractor, so they are not comparable"
        + (" (a different domain classifier is a different feature space)" if mixed else "")
    )


def _count(x) -> str:
    return "an unlogged number of" if pd.isna(x) or x < 0 else f"{int(x):,}"


def objective_groups(data: AblationData) -> list[list[str]]:
    """Arms grouped by training objective (every OBJECTIVE_KEYS value alike): losses compare within a group."""
    keys = [k for k in data.axes if k in OBJECTIVE_KEYS]
    if not keys:
        return [list(data.arms)]
    objective = data.runs.drop_duplicates("arm_label").set_index("arm_label")[keys].astype(str).agg(" / ".join, axis=1)
    groups: dict[str, list[str]] = {}
    for arm in data.arms:
        if arm in objective.index:
            groups.setdefault(objective[arm], []).append(arm)
    return list(groups.values())


def objective_of(data: AblationData, a: str, b: str) -> str:
    """How the objectives of arms ``a`` and ``b`` differ: 'data.space pixel vs latent'."""
    keys = [k for k in data.axes if k in OBJECTIVE_KEYS]
    row = data.runs.drop_duplicates("arm_label").set_index("arm_label")
    diff = [f"{k} {row.at[a, k]} vs {row.at[b, k]}" for k in keys if str(row.at[a, k]) != str(row.at[b, k])]
    return "; ".join(diff) or "different objectives"


# -- samplers ---------------------------------------------------------------------------------------


def heun_sentence(evals: pd.DataFrame, runs: pd.DataFrame) -> str | None:
    """What a 'heun' setting is, per process: DDPM's (harness.diffusion.samplers.heun) is not Karras' full
    Heun; flow's (harness.diffusion.flow) is, with an Euler last step, so neither is read as the other."""
    heun = evals[evals["sampler"] == "heun"]
    heun = heun.assign(process=heun["run_id"].map(runs.set_index("run_id")["process"]).fillna("ddpm"))
    parts = []
    for name, rows in heun.groupby("process", sort=True):
        nfe = rows.groupby("setting", sort=False)["nfe"].mean()
        counts = ", ".join(f"{s}: {int(n):,} NFE" for s, n in nfe.items() if pd.notna(n))
        counts = f" ({counts})" if counts else ""
        if name == "flow":
            parts.append(
                "For flow matching, heun is Heun's 2nd-order method on the time grid with an Euler last step "
                f"(its velocity at t = 0 is not needed), so heun-k costs 2k - 1 network evaluations{counts}."
            )
            continue
        parts.append(
            f"The DDPM heun setting is Heun's 2nd-order solver (Karras et al. 2022, Algorithm 1) only below "
            f"sigma_max = {HEUN_SIGMA_MAX:g}: steps from noise levels above it, and the last step, are Euler steps, "
            f"so it is not Karras' full Heun, and its NFE is the counted number of network evaluations{counts}"
            "; Karras' Heun with the same steps would use 2 x steps - 1."
        )
    return " ".join(parts) or None

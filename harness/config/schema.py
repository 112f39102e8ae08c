"""Names defined once: MLflow tag names and the evaluation metrics (with their direction).

Everything that writes or reads a tag or a metric (runner, tracking, sweep, analysis) imports it
from here, so a name cannot drift between the writer and the reader. The fields of a sampler setting
are the other such schema; they come from ``harness.config.SamplerSetting`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- MLflow tags ------------------------------------------------------------------------------------
ROLE = "harness.role"  # ablation | train | eval | report | bench | sweep ...
HASH = "harness.config_hash"  # Config.train_hash() of the trained model
SPEC = "harness.spec"
COMMIT = "git.commit"
DIRTY = "git.dirty"
# The hash of the sources that determine a run's numbers (orchestration/provenance.py): on a training run the
# training code, on an evaluation run the evaluation code (which includes the training code).
CODE_VERSION = "harness.code_version"
# On a training run, the evaluation code that scored its in-training evaluations (its curves, when digits became
# recognizable): a reused model keeps curves scored by the code of its time, which the report names. "mixed"
# when a resume crossed a change of that code.
CURVE_CODE = "harness.curve_code_version"
MIXED_CODE = "mixed"
ARM = "harness.arm"  # the arm as JSON, {dotted key: value} (plan.json's jobs hold the same); arm_text() names it
SEED = "harness.seed"
DEVICE = "harness.device"
CHECKPOINT = "harness.checkpoint"
ERROR = "harness.error"
PROFILE = "harness.profile"
QUESTION = "harness.question"
PARENT = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment of this kind on its runs (model training), not on GenAI traces.
EXPERIMENT_KIND, CUSTOM_MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
# A saved view of the runs page (MLflow's "share view"): the experiment tag ``SHARED_VIEW + ARMS_VIEW``,
# opened by ``#/experiments/<id>/runs?viewStateShareKey=<ARMS_VIEW>`` (tracking.arms_view_url).
SHARED_VIEW, ARMS_VIEW = "mlflow.sharedViewState.", "harness-arms"
ENV = "env."  # prefix of a training run's environment tags (orchestration/environment.py)
REUSE = "harness.reuse"  # the reuse policy of a launch (provenance.REUSE_POLICIES)
# Sweeps. Runs of a study, by role: ``sweep`` (the parent, one per study), ``trial`` (a child of the
# parent per Optuna trial; its objective metrics are the aggregate over seeds, with ``spread_key`` beside),
# ``trial_seed`` (a child of its trial per seed: that model's final evaluation), ``confirm`` (a child of
# the parent per confirmed trial and fresh seed). All carry STUDY; trial, trial_seed and confirm carry TRIAL.
STUDY = "harness.study"
TRIAL = "harness.trial"
TRIAL_STATE = "harness.trial_state"  # COMPLETE | PRUNED | FAIL | RUNNING, as Optuna's
BEST_TRIAL = "harness.best_trial"  # "true" on the best trial's run
BEST_TRIAL_NUMBER = "harness.best_trial_number"  # on the parent
BEST_RUN_ID = "harness.best_run_id"  # on the parent
CONFIRM_RANK = "harness.confirm_rank"  # on confirm runs: the trial's rank in the search, 1 = best
AGGREGATE = "harness.aggregate"  # on the parent: mean | median over a trial's seeds
SEEDS = "harness.seeds"  # on the parent: the search's seeds, JSON list
CONFIRM_SEEDS = "harness.confirm_seeds"  # on the parent: the fresh seeds of confirmation, JSON list
STORAGE = "harness.storage"  # on the parent: the Optuna storage (journal file or URL without password)
N_TRIALS = "harness.n_trials"
SAMPLER = "harness.sampler"
PRUNER = "harness.pruner"
WORKER = "harness.worker"  # host:pid of the worker that ran a trial
RETRY_OF = "harness.retry_of"  # the trial a retried trial repeats, "-" if none
STOPPED = "harness.stopped"  # why a trial stopped early (pruned, diverged)
FIGURE_UNAVAILABLE = "harness.figure_unavailable."  # prefix: + figure name -> why it could not be drawn
FID_INCEPTION_UNAVAILABLE = "harness.fid_inception_unavailable"  # why an evaluation has no InceptionV3 FID
# The feature space of a run's FID, KID and precision/recall: the weights hash of the domain classifier
# (features.weights_fingerprint), on every training and evaluation run; FIDs compare only within one value.
FEATURE_FINGERPRINT = "harness.feature_fingerprint"
RECOGNIZER_FINGERPRINT = "harness.recognizer_fingerprint"  # the same for the recognizer (recognizability)
# A features run (role ``features``) holds the classifiers of one data set: its fingerprint, and the cache
# names of both networks (architecture, data fingerprint, seed, epochs), which is what it is looked up by.
DATA_FINGERPRINT = "harness.data_fingerprint"
FEATURES_KEY = "harness.features_key"


def arm_text(arm: dict) -> str:
    """An arm's name in logs and reports, ``diffusion.schedule=cosine, train.lr=0.001``; ``base`` for none."""
    return ", ".join(f"{k}={v}" for k, v in arm.items()) or "base"


# -- evaluation metrics -----------------------------------------------------------------------------


PRC_NEIGHBORHOOD = 3  # k of the k-NN balls in precision/recall (Kynkaanniemi et al. 2019)


@dataclass(frozen=True)
class Metric:
    name: str
    lower_is_better: bool | None  # None: not a quality (counts, seconds)
    curve: bool  # worth a history over training (the rest are constant or bookkeeping)
    text: str  # how a report names it
    # The fewest generated samples its definition allows: ``eval.num_samples`` is bounded below by the largest
    # (MIN_EVAL_SAMPLES), so a config that validates never fails after training for want of samples.
    min_samples: int = 1


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("fid", True, True, "FID", 2),  # a covariance needs two points
        # FID's companions at the same N (evaluation/frechet.py): the N-corrected FID_inf of Chong & Forsyth
        # (2020), the bootstrap standard error over the generated samples, and the floor, held-out real images.
        Metric("fid_inf", True, False, "FID_inf (N-corrected FID)"),
        Metric("fid_se", None, False, "FID standard error", 2),
        Metric("fid_floor", None, False, "FID floor (held-out real images)"),
        Metric("kid", True, True, "KID", 2),  # the unbiased MMD^2 estimate needs pairs within a subset
        Metric("kid_std", None, False, "KID std", 2),
        # a sample's k-NN radius needs k other samples
        Metric("precision", False, True, "precision", PRC_NEIGHBORHOOD + 1),
        Metric("recall", False, True, "recall", PRC_NEIGHBORHOOD + 1),
        Metric("recognizability", False, True, "recognizability"),
        Metric("class_accuracy", False, True, "class accuracy"),
        Metric("recognized_class_accuracy", False, True, "class accuracy among recognizable samples"),
        Metric("nfe", None, False, "NFE"),  # batch rows per sample: a classifier-free-guided step counts 2
        Metric("classifier_passes", None, False, "classifier passes"),  # forward + backward, classifier guidance
        Metric("sample_seconds", None, False, "sampling seconds"),
        Metric("fid_inception", True, False, "FID (InceptionV3)"),
        Metric("num_generated", None, False, "samples"),
        Metric("num_reference", None, False, "reference images"),
    )
}
EVAL_METRICS = tuple(METRICS)
MIN_EVAL_SAMPLES = max(m.min_samples for m in METRICS.values())  # every evaluation computes every metric
# Fixed by the setting, the evaluation config and the reference, the same at every step: a training run logs
# them as params. Only counts: a float recomputed on resume could differ in its last digit, which MLflow refuses.
CONSTANT_METRICS = ("nfe", "classifier_passes", "num_generated", "num_reference")


def spread_key(metric: str) -> str:
    """A sweep trial's standard deviation of ``metric`` over its seeds (absent with one seed)."""
    return f"{metric}_std"


def eval_key(label: str, metric: str) -> str:
    """A training run's metric for one evaluation setting (``SamplerSetting.label``): ``eval/<label>/<metric>``."""
    return f"eval/{label}/{metric}"


def parse_eval_key(key: str) -> tuple[str, str] | None:
    """``(label, metric)`` of an ``eval_key``; None for any other metric name."""
    head, label, metric = (key.split("/", 2) + ["", ""])[:3]
    return (label, metric) if head == "eval" and label and metric and "/" not in metric else None


NUM_BUCKETS = 10  # the training loss is also logged per tenth of [0, T), as bucket_key(0 .. 9)


def bucket_key(bucket: int) -> str:
    """A training run's loss on one tenth of the timestep range: ``train/loss_t<bucket>``."""
    return f"train/loss_t{bucket}"


CURVE_METRICS = tuple(m.name for m in METRICS.values() if m.curve)
# The size of a training run's network: parameters, and GFLOPs of one forward pass on one image
# (models.registry.gflops_per_image), so that arms can be compared at equal parameters or compute.
NUM_PARAMETERS, GFLOPS_PER_IMAGE = "model/num_parameters", "model/gflops_per_image"
# The floor of a latent-diffusion arm (data.space: latent), logged once to its training run: the frozen
# autoencoder's reconstructions of the held-out digits, scored as samples are (training/autoencoder.py).
# No sample decoded from the latents can beat them; ``AUTOENCODER_SCALE`` is the latents' scale factor s.
AUTOENCODER_PREFIX = "autoencoder/"
AUTOENCODER_FLOOR = ("fid", "recognizability")  # logged as autoencoder/recon_<metric>, defined in METRICS
AUTOENCODER_SCALE = "autoencoder/scale_factor"


def floor_key(metric: str) -> str:
    """A latent arm's floor for ``metric``: ``autoencoder/recon_<metric>``."""
    return f"{AUTOENCODER_PREFIX}recon_{metric}"


# Training-run metrics that reports compare across arms.
RUN_METRICS: dict[str, Metric] = {"final_loss": Metric("final_loss", True, False, "final training loss")}


def lower_is_better(metric: str) -> bool:
    m = METRICS.get(metric) or RUN_METRICS.get(metric)
    if m is None or m.lower_is_better is None:
        raise KeyError(f"{metric!r} is not a quality metric")
    return m.lower_is_better

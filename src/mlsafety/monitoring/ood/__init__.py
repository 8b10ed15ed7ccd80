"""OOD detectors: one per file, all behind one registry; higher score = more anomalous.

Example:
    >>> from mlsafety.monitoring import ood
    >>> det = ood.create("knn", k=50).fit(model, train_data)   # in-distribution data only
    >>> det.score(model, x)                                     # (N,)
    >>> dets = [ood.create(n) for n in ood.DETECTORS.tagged(ood.QUICK)]
    >>> ood.fit_detectors(dets, model, train_data)
    >>> ood.score_detectors(dets, model, x)                     # one forward pass feeds them all
"""

from mlsafety.monitoring.ood.adascale import AdaSCALEA, AdaSCALEL
from mlsafety.monitoring.ood.ash import ASH
from mlsafety.monitoring.ood.base import (
    DETECTORS,
    IMAGE,
    KNOWN_NEEDS,
    LAYERED_NEEDS,
    NEEDS_DROPOUT,
    NEEDS_HEAD_WEIGHTS,
    NEEDS_MEMBERS,
    OPT_IN,
    QUICK,
    SHARED_NEEDS,
    TEXT,
    Detector,
    available,
    create,
    register,
)
from mlsafety.monitoring.ood.deep_ensemble import DeepEnsemble, predictive_uncertainty
from mlsafety.monitoring.ood.dice import DICE
from mlsafety.monitoring.ood.energy import Energy
from mlsafety.monitoring.ood.engine import (
    FitData,
    collect_outputs,
    detector_keys,
    fit_detectors,
    reuse,
    score_detectors,
    sharing,
)
from mlsafety.monitoring.ood.entropy import Entropy
from mlsafety.monitoring.ood.evaluation import InputSource, ScoreCache, evaluate, modalities
from mlsafety.monitoring.ood.fdbd import FDBD
from mlsafety.monitoring.ood.gen import GEN
from mlsafety.monitoring.ood.gmm import GMM
from mlsafety.monitoring.ood.gradnorm import GradNorm
from mlsafety.monitoring.ood.gram import Gram
from mlsafety.monitoring.ood.kl_matching import KLMatching
from mlsafety.monitoring.ood.knn import KNN
from mlsafety.monitoring.ood.mahalanobis import Mahalanobis
from mlsafety.monitoring.ood.mahalanobis_pre import MahalanobisPre
from mlsafety.monitoring.ood.max_logit import MaxLogit
from mlsafety.monitoring.ood.mc_dropout import MCDropout, dropout_layers
from mlsafety.monitoring.ood.mds_ensemble import MDSEnsemble
from mlsafety.monitoring.ood.msp import MSP
from mlsafety.monitoring.ood.nac import NAC
from mlsafety.monitoring.ood.nci import NCI
from mlsafety.monitoring.ood.nnguide import NNGuide
from mlsafety.monitoring.ood.odin import ODIN
from mlsafety.monitoring.ood.openmax import OpenMax
from mlsafety.monitoring.ood.rankfeat import RankFeat
from mlsafety.monitoring.ood.react import ReAct
from mlsafety.monitoring.ood.reconstruction import Reconstruction
from mlsafety.monitoring.ood.reject import RejectRow, RejectTable, combined_risk, evaluate_reject, reject_table
from mlsafety.monitoring.ood.relation import Relation
from mlsafety.monitoring.ood.residual import Residual
from mlsafety.monitoring.ood.rmd import RMD
from mlsafety.monitoring.ood.rotation import Rotation
from mlsafety.monitoring.ood.scale import SCALE
from mlsafety.monitoring.ood.search import BankDetector, Search, bank_search, kth_largest, top_k_sum, unit_bank
from mlsafety.monitoring.ood.she import SHE
from mlsafety.monitoring.ood.temperature_msp import TemperatureMSP
from mlsafety.monitoring.ood.tuning import Tuned, tune
from mlsafety.monitoring.ood.vim import ViM
from mlsafety.monitoring.ood.vra import VRA
from mlsafety.monitoring.ood.weiper import WeiPer

__all__ = [
    "ASH",
    "DETECTORS",
    "DICE",
    "FDBD",
    "GEN",
    "GMM",
    "IMAGE",
    "KNN",
    "KNOWN_NEEDS",
    "LAYERED_NEEDS",
    "MSP",
    "NAC",
    "NCI",
    "NEEDS_DROPOUT",
    "NEEDS_HEAD_WEIGHTS",
    "NEEDS_MEMBERS",
    "ODIN",
    "OPT_IN",
    "QUICK",
    "RMD",
    "SCALE",
    "SHARED_NEEDS",
    "SHE",
    "TEXT",
    "VRA",
    "AdaSCALEA",
    "AdaSCALEL",
    "BankDetector",
    "DeepEnsemble",
    "Detector",
    "Energy",
    "Entropy",
    "FitData",
    "GradNorm",
    "Gram",
    "InputSource",
    "KLMatching",
    "MCDropout",
    "MDSEnsemble",
    "Mahalanobis",
    "MahalanobisPre",
    "MaxLogit",
    "NNGuide",
    "OpenMax",
    "RankFeat",
    "ReAct",
    "Reconstruction",
    "RejectRow",
    "RejectTable",
    "Relation",
    "Residual",
    "Rotation",
    "ScoreCache",
    "Search",
    "TemperatureMSP",
    "Tuned",
    "ViM",
    "WeiPer",
    "available",
    "bank_search",
    "collect_outputs",
    "combined_risk",
    "create",
    "detector_keys",
    "dropout_layers",
    "evaluate",
    "evaluate_reject",
    "fit_detectors",
    "kth_largest",
    "modalities",
    "predictive_uncertainty",
    "register",
    "reject_table",
    "reuse",
    "score_detectors",
    "sharing",
    "top_k_sum",
    "tune",
    "unit_bank",
]

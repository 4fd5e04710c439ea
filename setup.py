"""gglm-fairseq: Gradient-guided Loss Masking (Wang et al. 2021) as a fairseq plugin."""

from setuptools import find_packages, setup

setup(
    name="gglm_fairseq",
    version="0.1.0",
    description="Gradient-guided Loss Masking for noisy-data NMT, as a fairseq --user-dir plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.8",
    packages=find_packages(include=["gglm_fairseq", "gglm_fairseq.*"]),
    # torch and fairseq are not declared: the plugin goes into an environment that has them
    # (scripts/setup.sh builds one; fairseq-fixed needs --no-build-isolation, and a bare
    # "torch" requirement would pull a CUDA build or a second torch). Lower bounds here; the
    # tested versions are pinned in constraints.txt.
    install_requires=[
        "numpy>=1.21",
        "sacrebleu>=2.0",
        "sentencepiece>=0.1.97",
        "matplotlib>=3.5",  # gglm-report's plots
        "scikit-learn>=1.0",  # gglm-report's ROC-AUC
        "tensorboard>=2.10",  # what fairseq-train --tensorboard-logdir writes with
    ],
    extras_require={"test": ["pytest", "ruff"]},
    entry_points={
        "console_scripts": [
            "gglm-user-dir=gglm_fairseq.cli:print_user_dir",
            "gglm-noise=gglm_fairseq.noise:main",
            "gglm-report=gglm_fairseq.report:main",
        ]
    },
)

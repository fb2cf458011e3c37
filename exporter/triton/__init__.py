"""Serving hand-off to Triton Inference Server: a model repository built from our artifacts'
manifests (`repository`), its ``config.pbtxt`` written through Triton's own schema (`config`), the
Python-backend models it uses (``exporter.triton_backend``), and a local server for tests and trials
(`server`)."""

from autotimm_deploy.exporter.triton.config import ServeOptions
from autotimm_deploy.exporter.triton.repository import RepoModel, build_repository

__all__ = ["RepoModel", "ServeOptions", "build_repository"]

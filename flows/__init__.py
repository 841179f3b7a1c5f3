"""Prefect flows over ``sdm``: thin tasks that call sdm functions (sdm never imports Prefect)."""

"""Thin Prefect flows over pipeline/ and models/."""

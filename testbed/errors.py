"""Errors an operator sees: each says what is wrong and where."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input in a file or request: ``where`` names the file and key (or index)."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")

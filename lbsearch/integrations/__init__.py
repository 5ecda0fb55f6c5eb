"""Your own training code as the trial: the trial API (``lbsearch.api``), the entry of a script
trial's ranks, and the HF ``Trainer`` and Lightning adapters."""


__all__: list[str] = []

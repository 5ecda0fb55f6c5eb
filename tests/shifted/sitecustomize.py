"""On PYTHONPATH (tests/shifted/shift.py puts it there), every Python process shifts the spec defaults as it starts."""

import shift

shift.apply()

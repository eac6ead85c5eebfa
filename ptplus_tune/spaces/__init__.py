"""Search spaces: parse and validate a study specification (YAML in search_spaces/)."""

from ptplus_tune.spaces.sampling import define_by_run
from ptplus_tune.spaces.spec import Parameter, StudySpec, load_space, parse_space, shipped_spaces, validate

__all__ = ["Parameter", "StudySpec", "define_by_run", "load_space", "parse_space", "shipped_spaces", "validate"]

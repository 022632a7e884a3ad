"""The common base every package imports and which imports nothing else of ours: the error
hierarchy and input validators, atomic file writes, torch's thread count.

Pure Python at import time (torch is imported by the helpers that need it, when called), so
that the vocabulary (search_spaces) and the parameter server stay light.
"""

from raynas.common.errors import (
                                  Busy,
                                  ConfigError,
                                  DataError,
                                  EvaluationError,
                                  InvalidArchitecture,
                                  NasError,
                                  NotFound,
                                  NotReady,
                                  check_choice,
                                  check_int,
                                  check_number,
                                  prefixed_errors,
)

__all__ = ["Busy", "ConfigError", "DataError", "EvaluationError", "InvalidArchitecture", "NasError", "NotFound",
           "NotReady", "check_choice", "check_int", "check_number", "prefixed_errors"]

# a package, so these test modules get unique names (e.g. tests/codecs/test_bad_input.py)

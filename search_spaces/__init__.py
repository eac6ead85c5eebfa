"""The shipped search spaces, installed as package data of `ptplus_tune.search_spaces`."""

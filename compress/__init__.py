"""leanserve compress: cheaper variants of one base model, each measured.

Library + CLI (`python -m compress`, `leanserve-compress`), run in its own environment
(llm-compressor's pins differ from vLLM's). See compress/README.md for the CLI contract
(arguments, JSON progress lines, exit codes, store layout, card fields).
"""

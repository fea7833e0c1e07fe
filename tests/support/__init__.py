"""What the tests and the benchmarks share: network namespaces (`netns`), hand-built frames
(`frames`) and HTTP clients. bench/ imports from here too (`from tests.support import frames`).
"""

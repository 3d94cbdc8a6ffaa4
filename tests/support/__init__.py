"""Helpers shared by the test suites: waiting with deadlines, processes, a
scripted worker speaking the dispatch protocol, and test videos."""

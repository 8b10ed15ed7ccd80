"""Test helpers shared across the suite (conformance suites, assertions); not tests themselves."""

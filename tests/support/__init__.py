"""Support modules shared by the test suites (imported as `tests.support...`)."""

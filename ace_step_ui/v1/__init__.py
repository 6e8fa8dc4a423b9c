"""ACE-Step v1 3.5B (`ACE-Step/ACE-Step-v1-3.5B`): our own implementation of the official pipeline."""

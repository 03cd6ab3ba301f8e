"""Process-wide settings that every layer may read; the bottom package (imports nothing of ours).

`settings.paths`: where the project keeps its files (TCRAG_HOME, the prepared model, the collection
store, the repo's sample data), computed in one place.
"""

"""The generation engine: scheduler, KV-cache block manager, runner, sequences, detokenizer.

Nothing is imported here, so importing one engine module does not pull in the others (or torch).
"""

"""Scoring the unlabelled pool: MC-dropout inference over items, the per-item scores it accumulates,
and sharding the pool across processes. Strategies read these scores; nothing here knows a strategy."""

"""Test oracles: an independent batch computation of the contract and a seeded event generator.

Nothing here imports ``features`` or ``jobs``: the reference is written from
sections 2-5 of ``/work/shared/spec/contract.md`` so that the job is checked
against the contract, not against itself.
"""

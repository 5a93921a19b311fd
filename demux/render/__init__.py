"""Renderers: turn records, outcomes and tables into text. No decisions are made here."""

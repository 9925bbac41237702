"""The shapes world: coloured geometric shapes on a grey canvas, with an exact analytic detector."""

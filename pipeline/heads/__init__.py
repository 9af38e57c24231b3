"""The heads stage: many cheap models trained on cached features, selected on validation.

- :mod:`~pipeline.heads.stage`: the stage's declaration; :mod:`~pipeline.heads.run`:
  :func:`~pipeline.heads.run.run_heads` (sweep, leaderboard, each head's best saved, the
  overall best tested once);
- :mod:`~pipeline.heads.kind`: the one interface of a head kind (``HeadKind``) and a fitted
  head (``FittedHead``); :mod:`~pipeline.heads.registry`: the kinds (``dense`` in
  :mod:`~pipeline.heads.dense`, the scikit-learn ones in ``_sklearn``);
- :mod:`~pipeline.heads.trial`: one trial's settings; :mod:`~pipeline.heads.trials`: every
  trial of the configured heads and sweeps, each with its kind resolved once;
  :mod:`~pipeline.heads.sweep`: fitting and scoring them, on dask or one after another;
- :mod:`~pipeline.heads.splits`: a view's splits as labelled features, in memory or lazy;
  :mod:`~pipeline.heads.features`: the parts a head reads (flatten, gap, gmp of the output;
  taps) as normalised rows;
- :mod:`~pipeline.heads.leaderboard`: ranked results; :mod:`~pipeline.heads.saving`: head
  folders saved and loaded without running code.

Importing the package imports none of its modules (scikit-learn and Keras load only with the
modules that need them).
"""

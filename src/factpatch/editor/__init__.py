"""factpatch.editor: ROME and MEMIT over Hugging Face transformers, written as `.fpatch` files.

One concern per module:
  adapters   which matrix each model family edits, its orientation, body and head
  prompts    token rows: where the subject ends and the target starts
  corpus     text for covariance statistics and locality checks
  stats      C = E[k kᵀ] per layer, cached on disk
  keys       the key at the subject's last token, averaged over context prefixes
  values     batched optimisation of the residual delta that yields the new target
  memory     tokens per optimisation pass from a memory budget (activations measured per token)
  rome       rank-one update per edit
  memit      batch update spread over several layers
  layers     the --layers argument: lists, defaults, pluggable strategies
  trace      causal tracing: indirect effect of restoring residual, MLP and attention states
  trace_plot the trace's heat map (PNG)
  auto_layers  --layers auto: trace, candidate windows, validation sweep on a held-out slice
  weights    writing low-rank deltas into a live model
  scoring    batched read-outs: target log-probs, greedy answers, text statistics
  evaluate   efficacy, generalization, specificity, locality, gates
  pipeline   load → check inputs → statistics → edit → patch; evaluation of a patch
  cli        `factpatch edit`, `factpatch eval`, `factpatch patch inspect`
  trace_cli  `factpatch trace`

It never imports vLLM.
"""

"""The process runtime shared by evaluation and training (neither's own): ranks, devices and the distributed set-up
(runtime.dist), and numbers as the commands print them (runtime.printing). Layer order: prep <- pipelines <- models
<- runtime <- eval <- train <- bench (tests/test_architecture.py). Nothing here is imported on `import runtime`:
runtime.printing stays free of torch for the entry points' start-up."""

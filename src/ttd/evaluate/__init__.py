"""The paper's three evaluation tasks: multi-tag selection, caption-level and open-vocabulary segmentation."""

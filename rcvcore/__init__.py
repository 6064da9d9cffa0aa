"""rcvcore: scale-covariance scans (Regression Concept Vectors), pruning and transfer of CNNs.

Implements Graziani et al., "Interpretable CNN Pruning for Preserving Scale-Covariant Features in
Medical Imaging" (iMIMIC 2020) and "On the Scale Invariance in State of the Art CNNs Trained on
ImageNet" (MAKE 2021). Importing rcvcore never imports streamlit.
"""
__version__ = "0.1.0"

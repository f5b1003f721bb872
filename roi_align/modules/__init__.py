from .roi_align import RoIAlign, RoIAlignAvg, RoIAlignMax

__all__ = ["RoIAlign", "RoIAlignAvg", "RoIAlignMax"]
